// Validation of everything a client names or describes: segment names, dtypes, shapes, modes,
// attributes. Pure functions; unit-tested in tests/unit/validate_test.cc.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>

#include "shmbroker/status.h"

namespace shmbroker::daemon {

inline constexpr std::size_t kMaxNameBytes = 255;
inline constexpr std::size_t kMaxDims = 32;
inline constexpr std::size_t kMaxAttrs = 32;
inline constexpr std::size_t kMaxAttrKeyBytes = 64;
inline constexpr std::size_t kMaxAttrValueBytes = 1024;
// Globs (list, purge): a name is at most 255 bytes, so longer patterns only cost; matching is
// O(pattern x name) (GlobMatch), and a purge takes at most kMaxPurgePatterns of them.
inline constexpr std::size_t kMaxPatternBytes = 512;
inline constexpr std::size_t kMaxPurgePatterns = 16;
inline constexpr std::size_t kMaxClientNameBytes = 64;
// Holders listed by stat (each up to ~90 bytes on the wire).
inline constexpr std::size_t kMaxHolders = 100;
// Longest ttl and longest wait: beyond them a value is a mistake, not a plan.
inline constexpr std::uint64_t kMaxTtlMs = std::uint64_t{10} * 365 * 86'400'000;
inline constexpr std::uint64_t kMaxWaitMs = 86'400'000;
// Arrays in flight (tickets) one user may have at once.
inline constexpr std::size_t kMaxTicketsPerUser = 65536;
// Largest segment the daemon will try to back: well inside off_t.
inline constexpr std::uint64_t kMaxSegmentBytes = std::uint64_t{1} << 56;

// 1..255 bytes of printable ASCII (0x21..0x7e; no space), '/' allowed.
Status ValidateName(std::string_view name);

// A NumPy array-interface type string of a non-structured dtype, exactly as numpy.dtype(x).str
// spells it: "<f8", "|u1", "|b1", ">i2", "<c16", "<M8[ns]", "<m8", "|S7", "<U5", "|V16".
// Returns the item size in bytes.
Result<std::uint64_t> ParseDtype(std::string_view dtype);

// itemsize * product(shape), with at most kMaxDims dimensions, checked for overflow and against
// kMaxSegmentBytes.
Result<std::uint64_t> ComputeNbytes(std::uint64_t itemsize, std::span<const std::uint64_t> shape);

// A list pattern: at most kMaxPatternBytes (empty means all).
Status ValidatePattern(std::string_view pattern);

// Permission bits only (0..0777).
Status ValidateMode(std::uint32_t mode);

// At most kMaxAttrs entries; keys 1..kMaxAttrKeyBytes printable ASCII, values up to
// kMaxAttrValueBytes of valid UTF-8 (protobuf strings must be UTF-8).
Status ValidateAttrs(const std::map<std::string, std::string>& attrs);

}  // namespace shmbroker::daemon
