// Sizes, durations, times and modes as people read and write them, the same in the daemon's log,
// shmctl and the configuration. Pure functions, unit-tested in tests/unit/units_test.cc.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "shmbroker/status.h"

namespace shmbroker {

// 0 B, 512 B, 4.0 KiB, 1.5 MiB, 8.0 GiB, 2.0 TiB: one decimal, and never "1024.0" of a unit
// (1048575 bytes is "1.0 MiB").
std::string HumanBytes(std::uint64_t bytes);

// "1048576", "512K", "512M", "8G", "1T" (binary units; "MiB"/"MB" spellings accepted too).
Result<std::uint64_t> ParseSize(std::string_view text);

// The largest whole unit: 5s, 3m, 2h, 4d.
std::string HumanAge(std::chrono::seconds age);

// "90s", "10m", "2h", "7d", "1w": a number and its unit (a bare number is refused: minutes or
// seconds?); nullopt if malformed or above 2^40 seconds.
std::optional<std::chrono::seconds> ParseDuration(std::string_view text);

// 2026-11-23T04:05:31.836Z (UTC, milliseconds truncated).
std::string Iso8601(std::chrono::system_clock::time_point t);

// Milliseconds since the epoch, truncated as Iso8601 truncates them.
std::int64_t UnixMillis(std::chrono::system_clock::time_point t);

// Permission bits as "0644".
std::string ModeString(std::uint32_t mode);

}  // namespace shmbroker
