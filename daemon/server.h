// The daemon's top level: the listening socket (bound with stale-socket recovery, or adopted from
// systemd), accepting connections, systemd notifications and the fd store, and shutdown.
#pragma once

#include <asio.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "connection.h"
#include "fd_store.h"
#include "registry.h"
#include "request_handler.h"
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

  // Restores segments handed back by systemd, then adopts the inherited listening socket or binds
  // one (refusing if a live daemon answers there, removing a stale file if not; mode 0666), starts
  // accepting and tells systemd READY=1.
  Status Listen();
  // Stops accepting, closes every client, removes a socket file it bound, tells systemd
  // STOPPING=1. Idempotent.
  void Stop();

  const std::string& socket_path() const { return options_.socket_path; }

 private:
  void Accept();
  Status Bind();
  void Tick();  // Watchdog and STATUS, from the event loop itself.
  void ScheduleNotifyFlush();
  std::string StatusLine() const;

  asio::io_context& io_;
  ServerOptions options_;
  std::optional<FdStore> fd_store_;
  Registry registry_;
  RequestHandler handler_;
  ConnectionManager connections_;
  asio::basic_socket_acceptor<SeqPacket> acceptor_;
  asio::steady_timer retry_timer_;
  asio::steady_timer tick_timer_;
  asio::steady_timer notify_timer_;
  bool notify_retry_pending_ = false;
  std::chrono::steady_clock::duration tick_interval_{};
  std::optional<std::chrono::microseconds> watchdog_;
  std::string last_status_;
  bool stopped_ = false;
  std::uint64_t next_session_id_ = 1;
  bool bound_ = false;
  ino_t socket_ino_ = 0;
};

// Whether a daemon accepts connections on `path` now.
bool DaemonAnswers(const std::string& path);

}  // namespace shmbroker::daemon
