// The daemon's top level, as in Asio's HTTP server example: it accepts connections, hands each
// to a Connection, and stops everything on SIGTERM or SIGINT. The listening socket is the
// Listener's, systemd's part the ServiceManager's.
#pragma once

#include <asio.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "connection.h"
#include "listener.h"
#include "registry.h"
#include "request_handler.h"
#include "service_manager.h"
#include "systemd.h"

namespace shmbroker::daemon {

struct ServerOptions {
  std::string socket_path;  // Used when no listening socket is inherited.
  std::uint64_t max_memory = 0;
  std::string version;
  std::unique_ptr<Notifier> notifier;  // Null outside systemd.
  std::vector<ListenFd> inherited;     // $LISTEN_FDS: a listening socket and/or stored segments.
};

class Server {
 public:
  Server(asio::io_context& io, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Restores the segments the service manager kept, adopts the inherited listening socket or
  // binds one, starts accepting, stops on SIGTERM/SIGINT, and tells the service manager READY=1.
  Status Start();
  // Stops accepting, closes every client, removes the socket file it bound, tells the service
  // manager STOPPING=1. Idempotent.
  void Stop();

  const std::string& socket_path() const { return options_.socket_path; }

 private:
  void Accept();
  void RestoreStored();
  std::string StatusLine() const;

  asio::io_context& io_;
  ServerOptions options_;
  ServiceManager service_;
  Registry registry_;
  RequestHandler handler_;
  ConnectionManager connections_;
  std::optional<Listener> listener_;
  asio::basic_socket_acceptor<SeqPacket> acceptor_;
  asio::steady_timer retry_timer_;
  asio::signal_set signals_;
  bool stopped_ = false;
  std::uint64_t next_session_id_ = 1;
};

}  // namespace shmbroker::daemon
