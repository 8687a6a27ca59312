#include "log.h"

#include <spdlog/async.h>

#include <algorithm>

namespace shmbroker::daemon {

std::uint64_t LogLinesDropped() {
  auto pool = spdlog::thread_pool();  // None until the daemon starts its async logger.
  return pool ? pool->overrun_counter() : 0;
}

bool Throttle::Allow(std::uint64_t& suppressed) {
  auto now = std::chrono::steady_clock::now();
  if (tokens_ < 0) {
    tokens_ = burst_;
    last_ = now;
  }
  double refill = std::chrono::duration<double>(now - last_) / interval_;
  tokens_ = std::min<double>(burst_, tokens_ + refill);
  last_ = now;
  if (tokens_ < 1) {
    ++suppressed_;
    ++total_suppressed_;
    return false;
  }
  tokens_ -= 1;
  suppressed = suppressed_;
  suppressed_ = 0;
  return true;
}

}  // namespace shmbroker::daemon
