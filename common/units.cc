#include "common/units.h"

#include <charconv>
#include <cstdio>
#include <ctime>

namespace shmbroker {

std::string HumanBytes(std::uint64_t bytes) {
  if (bytes < 1024) return std::to_string(bytes) + " B";
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes) / 1024;
  int u = 0;
  // Decide the unit after rounding to one decimal, so 1048575 is "1.0 MiB", not "1024.0 KiB".
  while (v >= 1023.95 && u < 5) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", v, kUnits[u]);
  return buf;
}

Result<std::uint64_t> ParseSize(std::string_view text) {
  auto bad = [&] {
    return Status::InvalidArgument("size '" + std::string(text) +
                                   "' is not a byte count like 1048576, 512M, 8G or 1T");
  };
  std::uint64_t n = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || p == text.data()) return bad();
  std::string_view unit(p, text.data() + text.size() - p);
  int shift = 0;
  if (!unit.empty()) {
    switch (unit[0]) {
      case 'k':
      case 'K':
        shift = 10;
        break;
      case 'm':
      case 'M':
        shift = 20;
        break;
      case 'g':
      case 'G':
        shift = 30;
        break;
      case 't':
      case 'T':
        shift = 40;
        break;
      case 'b':
      case 'B':
        shift = 0;
        break;
      default:
        return bad();
    }
    std::string_view suffix = unit.substr(1);
    if (shift == 0 ? !suffix.empty()
                   : !(suffix.empty() || suffix == "B" || suffix == "iB" || suffix == "b")) {
      return bad();
    }
  }
  if (shift > 0 && n > (~std::uint64_t{0} >> shift)) return bad();
  return n << shift;
}

std::string HumanAge(std::chrono::seconds age) {
  long long s = age.count() < 0 ? 0 : age.count();
  if (s < 120) return std::to_string(s) + "s";
  if (s < 120 * 60) return std::to_string(s / 60) + "m";
  if (s < 48 * 3600) return std::to_string(s / 3600) + "h";
  return std::to_string(s / 86400) + "d";
}

std::optional<std::chrono::seconds> ParseDuration(std::string_view text) {
  std::uint64_t n = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || p == text.data()) return std::nullopt;
  std::string_view unit(p, text.data() + text.size() - p);
  std::uint64_t mult;
  if (unit == "s") {
    mult = 1;
  } else if (unit == "m") {
    mult = 60;
  } else if (unit == "h") {
    mult = 3600;
  } else if (unit == "d") {
    mult = 86400;
  } else if (unit == "w") {
    mult = 7 * 86400;
  } else {
    return std::nullopt;
  }
  if (n > (std::uint64_t{1} << 40) / mult) return std::nullopt;
  return std::chrono::seconds(static_cast<long long>(n * mult));
}

std::int64_t UnixMillis(std::chrono::system_clock::time_point t) {
  // Floor, also before 1970, so that the date and the milliseconds agree.
  return std::chrono::floor<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

std::string Iso8601(std::chrono::system_clock::time_point t) {
  std::int64_t ms = UnixMillis(t);
  std::int64_t secs = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
  std::time_t tt = static_cast<std::time_t>(secs);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  char buf[64];  // Room for any int the compiler imagines in each field.
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(ms - secs * 1000));
  return buf;
}

std::string ModeString(std::uint32_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "%04o", mode & 07777);
  return buf;
}

}  // namespace shmbroker
