#include "service_manager.h"

#include <unistd.h>

namespace shmbroker::daemon {

ServiceManager::ServiceManager(asio::io_context& io, std::unique_ptr<Notifier> notifier)
    : notifier_(std::move(notifier)), tick_timer_(io), flush_timer_(io) {
  if (!notifier_) return;
  fd_store_.emplace(*notifier_);
  // The manager's queue was full: try again shortly, from the loop, never blocking it.
  notifier_->on_backlog = [this] { ScheduleFlush(); };
}

void ServiceManager::ScheduleFlush() {
  if (flush_pending_ || stopped_) return;
  flush_pending_ = true;
  flush_timer_.expires_after(std::chrono::milliseconds(5));
  flush_timer_.async_wait([this](const asio::error_code& ec) {
    flush_pending_ = false;
    if (!ec && !notifier_->Flush()) ScheduleFlush();
  });
}

void ServiceManager::Ready(std::function<std::string()> status) {
  if (!notifier_) return;
  status_ = std::move(status);
  watchdog_ = Notifier::WatchdogInterval();
  last_status_ = status_();
  notifier_->Send("READY=1\nSTATUS=" + last_status_);
  Tick();
}

void ServiceManager::Tick() {
  if (stopped_) return;
  if (watchdog_) notifier_->Send("WATCHDOG=1");
  if (std::string status = status_(); status != last_status_) {
    notifier_->Send("STATUS=" + status);
    last_status_ = std::move(status);
  }
  // STATUS is refreshed once a second; the watchdog at half its timeout if that is sooner.
  std::chrono::steady_clock::duration next = std::chrono::seconds(1);
  if (watchdog_ && *watchdog_ < next) next = *watchdog_;
  tick_timer_.expires_after(next);
  tick_timer_.async_wait([this](const asio::error_code& ec) {
    if (!ec) Tick();
  });
}

void ServiceManager::Stopping() {
  if (!notifier_ || stopped_) return;
  stopped_ = true;
  tick_timer_.cancel();
  flush_timer_.cancel();
  notifier_->Send("STOPPING=1");
  // The loop is ending: give the manager a moment to take what is still queued.
  for (int i = 0; i < 100 && !notifier_->Flush(); ++i) ::usleep(10 * 1000);
}

}  // namespace shmbroker::daemon
