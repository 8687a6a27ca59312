// Logging that a client cannot turn against the daemon or the operator: strings a client chose
// are escaped (Escaped), and a flood of one kind of warning costs a bounded number of lines
// (Throttled). The logger itself is asynchronous with a bounded queue (main.cc), so a stalled
// stderr never blocks the event loop.
#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/text.h"

namespace shmbroker::daemon {

// Log lines the asynchronous logger dropped because its queue was full (stderr not keeping up).
std::uint64_t LogLinesDropped();

// A client-supplied string for a log line: quoted by the caller, escaped here.
inline std::string Escaped(std::string_view text) { return Printable(text); }

// Lets through at most `burst` messages, then one per `interval`; says how many it held back
// when it lets the next one through. One per kind of message.
class Throttle {
 public:
  Throttle(int burst, std::chrono::milliseconds interval) : burst_(burst), interval_(interval) {}
  // Whether to log now; `suppressed` is how many were held back since the last one.
  bool Allow(std::uint64_t& suppressed);
  std::uint64_t total_suppressed() const { return total_suppressed_; }

 private:
  int burst_;
  std::chrono::milliseconds interval_;
  double tokens_ = -1;  // -1: not started
  std::chrono::steady_clock::time_point last_;
  std::uint64_t suppressed_ = 0, total_suppressed_ = 0;
};

// Logs at `level` through `throttle`, adding "(N similar messages suppressed)" when some were.
template <typename... Args>
void Throttled(Throttle& throttle, spdlog::level::level_enum level,
               spdlog::format_string_t<Args...> fmt, Args&&... args) {
  if (!spdlog::should_log(level)) return;
  std::uint64_t suppressed = 0;
  if (!throttle.Allow(suppressed)) return;
  std::string text = fmt::format(fmt, std::forward<Args>(args)...);
  if (suppressed > 0) text += " (" + std::to_string(suppressed) + " similar messages suppressed)";
  spdlog::log(level, "{}", text);
}

}  // namespace shmbroker::daemon
