// The daemon's top level: the listening socket (with stale-socket recovery), accepting
// connections, and shutdown on SIGTERM/SIGINT.
#pragma once

#include <asio.hpp>
#include <cstdint>
#include <string>

#include "connection.h"
#include "registry.h"
#include "request_handler.h"

namespace shmbroker::daemon {

struct ServerOptions {
  std::string socket_path;
  std::uint64_t max_memory = 0;
  std::string version;
};

class Server {
 public:
  Server(asio::io_context& io, ServerOptions options);
  ~Server();

  // Binds the socket (refusing if a live daemon answers there, removing a stale file if not),
  // sets it to mode 0666 and starts accepting.
  Status Listen();
  // Stops accepting, closes every client, removes the socket file. Idempotent.
  void Stop();

  const std::string& socket_path() const { return options_.socket_path; }

 private:
  void Accept();

  asio::io_context& io_;
  ServerOptions options_;
  Registry registry_;
  RequestHandler handler_;
  ConnectionManager connections_;
  asio::basic_socket_acceptor<SeqPacket> acceptor_;
  asio::steady_timer retry_timer_;
  std::uint64_t next_session_id_ = 1;
  bool bound_ = false;
  ino_t socket_ino_ = 0;
};

// Whether a daemon accepts connections on `path` now.
bool DaemonAnswers(const std::string& path);

}  // namespace shmbroker::daemon
