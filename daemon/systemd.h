// The small, stable systemd protocols, spoken without libsystemd: sd_notify datagrams (READY,
// STATUS, STOPPING, WATCHDOG, FDSTORE) and socket activation ($LISTEN_FDS). Outside systemd
// (no $NOTIFY_SOCKET, no $LISTEN_PID for us) all of it is simply off.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "wire.h"

namespace shmbroker::daemon {

class Notifier {
 public:
  // Null when $NOTIFY_SOCKET is unset or unusable.
  static std::unique_ptr<Notifier> FromEnvironment();

  // Queues one notify message, with `fd` attached for FDSTORE=1, and sends what it can at once.
  // Messages go out in order and never block the caller: when the manager's queue is full the
  // rest waits for the next Flush() (`on_backlog` is told, to schedule one).
  void Send(std::string state, UniqueFd fd = {});

  // Sends queued messages without blocking; true when none is left.
  bool Flush();
  std::size_t backlog() const { return queue_.size(); }
  std::function<void()> on_backlog;

  // Calls `done` once every message queued so far has been handed to the manager (or failed
  // for good), from a later Flush(); returns false, without calling it, when none is queued.
  bool WhenSent(std::function<void()> done);

  // Half of $WATCHDOG_USEC (when $WATCHDOG_PID is unset or ours): how often to send WATCHDOG=1.
  static std::optional<std::chrono::microseconds> WatchdogInterval();

 private:
  Notifier(UniqueFd sock, std::string address);
  // 0, or the errno of a failed send (EAGAIN: try again later).
  int SendNow(const std::string& state, int fd);

  struct Message {
    std::string state;
    UniqueFd fd;
    std::vector<std::function<void()>> sent;  // WhenSent() callbacks waiting on this one.
  };
  std::deque<Message> queue_;
  UniqueFd sock_;
  std::string address_;  // sun_path bytes; a leading NUL for the abstract namespace.
};

struct ListenFd {
  UniqueFd fd;
  std::string name;  // From $LISTEN_FDNAMES; "" when not given.
};

// The fds systemd passed (socket activation and the fd store), if $LISTEN_PID is this process.
// Marks them close-on-exec and unsets the variables so children do not inherit them.
std::vector<ListenFd> TakeListenFds();

// Whether `fd` is a listening AF_UNIX SOCK_SEQPACKET socket.
bool IsListeningSeqPacket(int fd);

}  // namespace shmbroker::daemon
