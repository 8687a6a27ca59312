#include "validate.h"

#include "common/posix.h"

#include <charconv>
#include <cstring>

namespace shmbroker::daemon {
namespace {

bool IsPrintableNoSpace(char c) { return c > 0x20 && c < 0x7f; }

std::string Quote(std::string_view s) {
  std::string out = "'";
  for (char c : s.substr(0, 64)) {
    if (IsPrintableNoSpace(c) || c == ' ') {
      out.push_back(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned char>(c));
      out += buf;
    }
  }
  if (s.size() > 64) out += "...";
  return out + "'";
}

bool IsDatetimeUnit(std::string_view u) {
  static constexpr std::string_view kUnits[] = {"Y",  "M",  "W",  "D",  "h",  "m",  "s",
                                                "ms", "us", "ns", "ps", "fs", "as", "generic"};
  for (auto k : kUnits) {
    if (u == k) return true;
  }
  return false;
}

bool ValidUtf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = c < 0x80           ? 1
                    : (c >> 5) == 0x6  ? 2
                    : (c >> 4) == 0xe  ? 3
                    : (c >> 3) == 0x1e ? 4
                                       : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

}  // namespace

Status ValidateName(std::string_view name) {
  if (name.empty()) return Status::InvalidArgument("segment name is empty");
  if (name.size() > kMaxNameBytes) {
    return Status::InvalidArgument("segment name is " + std::to_string(name.size()) +
                                   " bytes; the limit is " + std::to_string(kMaxNameBytes));
  }
  for (char c : name) {
    if (!IsPrintableNoSpace(c)) {
      return Status::InvalidArgument("segment name " + Quote(name) +
                                     " has a character other than printable ASCII without spaces");
    }
  }
  return Status::Ok();
}

Result<std::uint64_t> ParseDtype(std::string_view dtype) {
  auto bad = [&](std::string_view why) {
    return Status::InvalidArgument(
        "dtype " + Quote(dtype) + " is not supported: " + std::string(why) +
        " (expected a NumPy type string such as '<f8', '|u1', '<M8[ns]')");
  };
  if (dtype.size() < 2 || dtype.size() > 32) return bad("wrong length");
  char order = dtype[0];
  char kind = dtype[1];
  if (order != '<' && order != '>' && order != '|') return bad("no byte-order character");
  std::string_view rest = dtype.substr(2);

  if (kind == 'M' || kind == 'm') {
    // "<M8", "<M8[ns]", "<m8[10s]"
    if (rest.substr(0, 1) != "8") return bad("datetime types are 8 bytes");
    rest.remove_prefix(1);
    if (!rest.empty()) {
      if (rest.front() != '[' || rest.back() != ']') return bad("malformed datetime unit");
      std::string_view unit = rest.substr(1, rest.size() - 2);
      std::size_t digits = 0;
      while (digits < unit.size() && unit[digits] >= '0' && unit[digits] <= '9') ++digits;
      auto mult = ParseUint(unit.substr(0, digits));
      if (digits > 0 && (!mult || *mult == 0 || *mult > 0x7fffffff)) {
        return bad("bad datetime unit multiplier");
      }
      if (!IsDatetimeUnit(unit.substr(digits))) return bad("unknown datetime unit");
    }
    if (order == '|') return bad("multi-byte types need '<' or '>'");
    return std::uint64_t{8};
  }

  auto parsed = ParseUint(rest);
  if (!parsed) return bad("no item size");
  std::uint64_t size = *parsed;
  switch (kind) {
    case 'b':
      if (size != 1) return bad("bool is 1 byte");
      break;
    case 'i':
    case 'u':
      if (size != 1 && size != 2 && size != 4 && size != 8) return bad("integer size 1, 2, 4 or 8");
      break;
    case 'f':
      if (size != 2 && size != 4 && size != 8 && size != 16) return bad("float size 2, 4, 8 or 16");
      break;
    case 'c':
      if (size != 8 && size != 16 && size != 32) return bad("complex size 8, 16 or 32");
      break;
    case 'S':
    case 'V':
      if (size > (std::uint64_t{1} << 31)) return bad("item size too large");
      if (order != '|') return bad("bytes and void types use '|'");
      return size;
    case 'U':
      if (size > (std::uint64_t{1} << 29)) return bad("item size too large");
      if (order == '|') return bad("unicode types need '<' or '>'");
      return size * 4;
    default:
      return bad("unknown kind (object and structured dtypes cannot be shared)");
  }
  // NumPy spells single-byte numeric types with '|' and wider ones with '<' or '>'.
  if ((size == 1) != (order == '|')) {
    return bad(size == 1 ? "single-byte types use '|'" : "multi-byte types need '<' or '>'");
  }
  return size;
}

Result<std::uint64_t> ComputeNbytes(std::uint64_t itemsize, std::span<const std::uint64_t> shape) {
  if (shape.size() > kMaxDims) {
    return Status::InvalidArgument("shape has " + std::to_string(shape.size()) +
                                   " dimensions; the limit is " + std::to_string(kMaxDims));
  }
  std::uint64_t total = itemsize;
  bool zero = itemsize == 0;
  bool overflow = false;
  for (std::uint64_t d : shape) {
    if (d == 0) zero = true;
    if (__builtin_mul_overflow(total, d, &total)) overflow = true;
  }
  if (zero) return std::uint64_t{0};
  if (overflow || total > kMaxSegmentBytes) {
    return Status::InvalidArgument("shape is too large: the segment would exceed " +
                                   std::to_string(kMaxSegmentBytes) + " bytes");
  }
  return total;
}

Status ValidatePattern(std::string_view pattern) {
  if (pattern.size() <= kMaxPatternBytes) return Status::Ok();
  return Status::InvalidArgument("pattern is longer than " + std::to_string(kMaxPatternBytes) +
                                 " bytes");
}

Status ValidateMode(std::uint32_t mode) {
  if (mode & ~std::uint32_t{0777}) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "mode 0%o has bits beyond 0777", mode);
    return Status::InvalidArgument(buf);
  }
  return Status::Ok();
}

Status ValidateAttrs(const std::map<std::string, std::string>& attrs) {
  if (attrs.size() > kMaxAttrs) {
    return Status::InvalidArgument(std::to_string(attrs.size()) + " attributes; the limit is " +
                                   std::to_string(kMaxAttrs));
  }
  for (const auto& [k, v] : attrs) {
    if (k.empty() || k.size() > kMaxAttrKeyBytes) {
      return Status::InvalidArgument("attribute key " + Quote(k) + " must be 1 to " +
                                     std::to_string(kMaxAttrKeyBytes) + " bytes");
    }
    for (char c : k) {
      if (!IsPrintableNoSpace(c)) {
        return Status::InvalidArgument("attribute key " + Quote(k) +
                                       " has a character other than printable ASCII");
      }
    }
    if (v.size() > kMaxAttrValueBytes) {
      return Status::InvalidArgument("attribute " + Quote(k) + " value is longer than " +
                                     std::to_string(kMaxAttrValueBytes) + " bytes");
    }
    if (!ValidUtf8(v)) return Status::InvalidArgument("attribute " + Quote(k) + " is not UTF-8");
  }
  return Status::Ok();
}

}  // namespace shmbroker::daemon
