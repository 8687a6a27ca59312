// The daemon's top level, as in Asio's HTTP server example: it accepts connections, hands each
// to a Connection, and stops everything on SIGTERM or SIGINT. The listening socket is the
// Listener's, systemd's part the ServiceManager's.
#pragma once

#include <asio.hpp>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "connection.h"
#include "fd_budget.h"
#include "listener.h"
#include "log.h"
#include "registry.h"
#include "request_handler.h"
#include "resource_limits.h"
#include "service_manager.h"
#include "systemd.h"
#include "worker.h"

namespace shmbroker::daemon {

struct ServerOptions {
  std::string socket_path;  // Used when no listening socket is inherited.
  Limits limits;
  std::string version;
  std::unique_ptr<Notifier> notifier;  // Null outside systemd.
  std::vector<ListenFd> inherited;     // $LISTEN_FDS: a listening socket and/or stored segments.
  // --shared-max: segments up to this size are blocks of shared regions; 0: none.
  std::uint64_t shared_max_bytes = RegistryOptions::kDefaultSharedMaxBytes;
  HugePages huge_pages = HugePages::kAuto;  // --huge-pages
  std::uint64_t warm_pool = 0;              // --warm-pool (at least prealloc)
  std::uint64_t prealloc = 0;               // --prealloc
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
  // Out of descriptors: accept on the spare one, refuse politely, and keep going.
  void AcceptWithSpare();
  // OK when a connection of `creds` may be taken now; why not otherwise.
  Status Admit(const Credentials& creds);
  // Sends `why` as the reply to the hello the client sends first, then closes.
  void Refuse(int fd, const Credentials& creds, const Status& why);
  // Once a second: connections that never said hello, stray pages in shared regions, processes
  // watched without a pidfd, held blocks a process no longer maps.
  void Sweep();
  void RestoreStored();
  std::string StatusLine() const;
  void HoldUntilExit(std::uint32_t pid, std::uint32_t uid,
                     std::vector<std::shared_ptr<SegmentEntry>> held);
  // Calls `exited` once process `pid` (of user `uid`) is gone, or at once should it have started
  // after `not_after_unix_ns` (the pid was reused). One watch a process: a pidfd, at most half a
  // user's descriptor quarter (FdBudget::MayWatch); past that, or without pidfd (Linux < 5.3),
  // Sweep looks every second.
  void WhenExited(std::uint32_t pid, std::uint32_t uid, std::int64_t not_after_unix_ns,
                  std::function<void()> exited);
  // Process `pid` is gone: its watch's callbacks run, its pidfd closes.
  void Exited(std::uint32_t pid);
  struct ExitWatch;
  // The watch of process `pid`, made if need be; null when it is gone (or, should it have started
  // after `not_after_unix_ns`, the pid was reused).
  ExitWatch* Watch(std::uint32_t pid, std::uint32_t uid, std::int64_t not_after_unix_ns);
  // From Sweep: segments held for a process it no longer maps (its arrays went after its
  // connection closed) are released before it exits.
  void ReleaseUnmapped();
  void WatchRestoredCreators();
  // --prealloc: fills the warm pool before serving.
  void Prealloc();
  // Every few seconds while the pool holds memory: give it back under memory pressure.
  void WatchPressure();

  asio::io_context& io_;
  ServerOptions options_;
  FdBudget fds_;
  ServiceManager service_;
  Registry registry_;
  RequestHandler handler_;
  ConnectionManager connections_;
  std::vector<std::byte> buffer_;  // Every connection's receive buffer: one thread reads.
  std::optional<Listener> listener_;
  asio::basic_socket_acceptor<SeqPacket> acceptor_;
  asio::steady_timer retry_timer_;
  asio::steady_timer sweep_timer_;
  asio::steady_timer tick_timer_;  // RequestHandler::Tick: ttl, tickets, waits.
  asio::steady_timer pressure_timer_;
  asio::signal_set signals_;
  UniqueFd spare_;  // Closed to accept one more when out of descriptors.
  Throttle refusals_{10, std::chrono::seconds(1)};
  bool stopped_ = false;
  std::uint64_t next_session_id_ = 1;
  // Last, so that it is joined first: its completions call into the handler and registry.
  Worker worker_;
  // Processes whose exit releases something: blocks of shared regions held for a closed
  // connection (RequestHandler::set_hold_until_exit), restored creators. By pid.
  struct ExitWatch {
    std::uint64_t start_ticks = 0;  // When it started (/proc/PID/stat), to tell a reused pid.
    std::uint32_t uid = 0;
    std::unique_ptr<asio::posix::stream_descriptor> pidfd;  // Null: Sweep looks.
    std::vector<std::function<void()>> on_exit;
    std::vector<std::shared_ptr<SegmentEntry>> held;  // Until it exits or maps them no more.
  };
  std::map<std::uint32_t, ExitWatch> exit_watches_;
  std::uint32_t maps_after_pid_ = 0;  // Where ReleaseUnmapped goes on.
};

}  // namespace shmbroker::daemon
