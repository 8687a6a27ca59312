// The warm pool (--warm-pool, --prealloc): the memfds of released large segments, zeroed and kept
// for later creates, so that those skip the page allocation that dominates a large create (and
// keep their 2 MiB pages, which the host may otherwise have taken back).
//
// Who may get which memfd. A client that was once sent a segment's descriptor may keep it, and
// its mappings, forever, whatever it told the daemon; zeroing does not revoke that. So a used
// memfd goes only to a create of the same class, (owner uid, gid, mode), whose segment every
// former holder could attach anyway, as the shared regions are keyed (see Arena). Memory from
// --prealloc that was never handed out goes to any create. Sealed memfds (F_SEAL_WRITE, or any
// seal a holder added beyond grow and shrink) never come back.
//
// Which ones fit: memfds are sealed against grow and shrink, so a used one serves only a create of
// exactly its size; a --prealloc one (not sealed yet) is cut to the create's size and sealed.
//
// Not thread-safe: the event loop's. Zeroing runs on the worker (see set_offload); a PoolEntry is
// shared with it, and its `state` says when the zeroing is done.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <optional>

#include "arena.h"
#include "common/unique_fd.h"
#include "memfd.h"

namespace shmbroker::daemon {

struct PoolEntry {
  enum State { kZeroing, kReady, kFailed };
  UniqueFd fd;
  std::uint64_t size = 0;
  std::uint64_t huge_bytes = 0;  // Written by the zeroing job before kReady.
  std::optional<ArenaKey> key;   // None: --prealloc memory never handed out (and not sealed).
  std::atomic<int> state{kZeroing};
  bool adopted = false;  // Set by AdoptPooled when it became a segment's memory.
};

class WarmPool {
 public:
  // Used memfds below this size are not kept: they are not worth a descriptor.
  static constexpr std::uint64_t kMinBytes = 2 << 20;

  explicit WarmPool(std::uint64_t max_bytes = 0) : max_bytes_(max_bytes) {}

  // Where zeroing runs: `offload(job, then)` runs `job` off the event loop, jobs in order, then
  // `then` on the loop. Unset (tests), memfds are zeroed at once.
  using Offload = std::function<void(std::function<void()> job, std::function<void()> then)>;
  void set_offload(Offload offload) { offload_ = std::move(offload); }
  // Whether an offload is set: then a taken entry must be used by a job queued after Put's.
  bool offloaded() const { return static_cast<bool>(offload_); }

  std::uint64_t max_bytes() const { return max_bytes_; }
  // Whether a released memfd of `size` bytes would be kept.
  bool Keeps(std::uint64_t size) const {
    return !closed_ && size >= kMinBytes && size <= max_bytes_;
  }

  // A released segment's memfd of class `key` (the caller checked Keeps(size)): zeroed off the
  // loop and kept, the oldest entries evicted to stay within max_bytes. Closed instead when a
  // holder added seals to it.
  void Put(const ArenaKey& key, UniqueFd fd, std::uint64_t size, std::uint64_t huge_bytes);
  // Fresh memory never handed out (--prealloc): zero already, resizable, for any class.
  void PutUnowned(UniqueFd fd, std::uint64_t size, std::uint64_t huge_bytes);

  // An entry for a create of `size` bytes by `key`, taken out of the pool: a used one of that
  // class and exactly that size, else the smallest unowned one of at least `size`; null if none.
  // Use it with AdoptPooled, in a job queued after the zeroing (see set_offload).
  std::shared_ptr<PoolEntry> Take(const ArenaKey& key, std::uint64_t size);
  // An entry taken but not used (the create failed before its memory was made): back in front.
  void Return(std::shared_ptr<PoolEntry> entry);

  // Closes entries, oldest first, until at least `bytes` went (all, given ~0), only those of
  // owner `uid` when given. Returns the bytes released.
  struct Released {
    std::uint64_t bytes = 0;
    std::uint64_t segments = 0;
  };
  Released Evict(std::uint64_t bytes, std::optional<std::uint32_t> uid = std::nullopt);

  // The daemon stops: everything is closed, nothing enters any more.
  void Close();

  std::uint64_t bytes() const { return bytes_; }
  std::uint64_t segments() const { return entries_.size(); }
  std::uint64_t reused() const { return reused_; }
  std::uint64_t released_bytes() const { return released_bytes_; }
  void CountReuse() { ++reused_; }
  // Descriptors all pools hold now (for the daemon's fd budget; the event loop's thread only).
  static std::size_t open_fds() { return open_fds_; }

 private:
  void Remove(std::list<std::shared_ptr<PoolEntry>>::iterator it);

  std::uint64_t max_bytes_;
  Offload offload_;
  bool closed_ = false;
  // Oldest first.
  std::list<std::shared_ptr<PoolEntry>> entries_;
  std::uint64_t bytes_ = 0;
  std::uint64_t reused_ = 0;
  std::uint64_t released_bytes_ = 0;
  static std::size_t open_fds_;
};

// Zeroes memfd `fd` of `size` bytes through a mapping of its own (2 MiB-aligned, so its 2 MiB
// pages stay as they are), after re-reserving any range a former holder punched out. Returns the
// bytes backed by 2 MiB pages. Blocks ~40 ms per GiB: off the event loop.
Result<std::uint64_t> ZeroMemfd(int fd, std::uint64_t size);

// Makes a taken entry the memory of a new segment of `size` bytes (off the event loop): an
// unowned one is cut to `size` and sealed against grow and shrink. Errors (a holder sealed it,
// zeroing failed) mean: make new memory instead.
Result<SegmentMemory> AdoptPooled(PoolEntry& entry, std::uint64_t size);

}  // namespace shmbroker::daemon
