// The daemon's side of its service manager (systemd): readiness, a status line, watchdog pings,
// stopping, and the segments kept in the fd store across restarts. Outside systemd (no
// $NOTIFY_SOCKET) it is inactive and every call does nothing.
#pragma once

#include <asio.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "fd_store.h"
#include "systemd.h"

namespace shmbroker::daemon {

class ServiceManager {
 public:
  // `notifier` null: inactive.
  ServiceManager(asio::io_context& io, std::unique_ptr<Notifier> notifier);
  ServiceManager(const ServiceManager&) = delete;
  ServiceManager& operator=(const ServiceManager&) = delete;

  bool active() const { return notifier_ != nullptr; }
  // The fd store, when active.
  FdStore* fd_store() { return fd_store_ ? &*fd_store_ : nullptr; }

  // READY=1; then, from the event loop, WATCHDOG=1 at half $WATCHDOG_USEC and STATUS= whenever
  // `status()` says something new (checked once a second).
  void Ready(std::function<std::string()> status);
  // STOPPING=1, and a moment for the manager to take what is still queued. Ends the timers.
  void Stopping();

 private:
  void Tick();
  void ScheduleFlush();

  std::unique_ptr<Notifier> notifier_;
  std::optional<FdStore> fd_store_;
  asio::steady_timer tick_timer_;
  asio::steady_timer flush_timer_;
  bool flush_pending_ = false;
  bool stopped_ = false;
  std::optional<std::chrono::microseconds> watchdog_;
  std::function<std::string()> status_;
  std::string last_status_;
};

}  // namespace shmbroker::daemon
