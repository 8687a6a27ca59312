// The segments' metadata for restarts, as one append-only log in one memfd (see fd_store.h): a
// create or unlink costs one pwrite, and a restart needs one fd store entry for any number of
// segments (systemd caps the store, FileDescriptorStoreMax).
//
// Layout: the 8-byte magic "shmbjrn1", then records of [u32 body length][u32 FNV-1a of the body]
// [body], little-endian; a body is one kind byte and the segment id as u64, then for kPut its
// serialized store::StoredSegment. Appends are sequential and a record is acknowledged only
// after its pwrite returned, so a crash can tear only the last record: reading stops at the first
// record that is cut short or fails its checksum.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "shmbroker/status.h"
#include "wire.h"

namespace shmbroker::daemon {

class Journal {
 public:
  enum class Kind : std::uint8_t { kPut = 1, kDelete = 2 };
  static constexpr std::string_view kMagic = "shmbjrn1";
  // Far above any StoredSegment (names, attrs and shapes are bounded by the protocol).
  static constexpr std::size_t kMaxBody = 1 << 20;

  // A new journal memfd holding only the magic (tail kMagic.size()); -1 fd with errno on failure.
  static UniqueFd Make();

  // One encoded record.
  static std::string EncodePut(std::uint64_t id, std::string_view stored_segment);
  static std::string EncodeDelete(std::uint64_t id);

  // Writes `record` (from Encode) at `*tail` of `fd` and advances `*tail`. False, errno set, when
  // the write fails: `*tail` stays, so the next append overwrites whatever was torn.
  static bool Append(int fd, std::uint64_t& tail, std::string_view record);

  struct Contents {
    std::map<std::uint64_t, std::string> live;  // Segment id -> its last put's payload.
    std::uint64_t end = 0;                      // Just after the last good record.
    std::string problem;  // Why reading stopped before the end of the file; "" if it did not.
  };
  // INVALID_ARGUMENT when `fd` is not a journal (wrong magic, unreadable, over `max_bytes`).
  static Result<Contents> Read(int fd, std::uint64_t max_bytes = std::uint64_t{1} << 32);
};

}  // namespace shmbroker::daemon
