// Restart survival through systemd's file descriptor store. Every segment's metadata is a record
// in one journal memfd (journal.h; FDNAME=journal-<generation>), written in place: systemd holds
// the same file, so a record is kept from the moment its pwrite returns. Beside it go the
// segments' memory: the memfd of a region of its own (seg-<id>), and each shared region once, when
// it is made (region-<id>). Unlink appends a delete and removes seg-<id> (FDSTOREREMOVE=1; shared
// regions stay). When deletes make up most of the journal it is rewritten from the registry as
// the next generation. A restarted daemon receives all of it through $LISTEN_FDS, rebuilds its
// registry and starts a fresh journal; shared regions no segment refers to any more are dropped
// then. Older daemons stored one metadata memfd per segment (meta-<id>): still restored, then
// moved into the journal.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "registry.h"
#include "systemd.h"

namespace shmbroker::daemon {

class FdStore {
 public:
  explicit FdStore(Notifier& notifier) : notifier_(notifier) {}

  // Restore() comes first: it starts the journal these write to.
  void Added(const SegmentEntry& s);
  void Removed(const SegmentEntry& s);
  void RegionAdded(const SharedRegion& r);
  // Calls `done` once everything Added or Removed so far is with the service manager; false
  // (without calling it) when it already is. A reply that waits on this keeps its promise across
  // a crash: what was acknowledged is in the store.
  bool WhenStored(std::function<void()> done) { return notifier_.WhenSent(std::move(done)); }

  // Rebuilds `registry` from the stored fds in `fds` (other entries are left alone), then writes
  // a fresh journal of it and keeps `registry` for later rewrites. Anything inconsistent (a
  // missing half, unreadable metadata, a size mismatch, a duplicate name) is logged, dropped from
  // the store and skipped; a journal torn at its end (a crash mid-write) gives what precedes the
  // tear. Returns the number of segments restored.
  std::size_t Restore(std::vector<ListenFd>& fds, Registry& registry);

  // Entries the service manager keeps at most (its FileDescriptorStoreMax; --fd-store-max).
  void set_max_entries(std::size_t n) { max_entries_ = n; }
  // OK when `uid` may add `n` more entries (a segment's memory, a shared region): two stay free
  // for the journal's next generation, and one user (root exempt) holds at most a quarter of the
  // rest, so that nobody can push everyone's segments out of the store. RESOURCE_EXHAUSTED
  // otherwise: systemd would refuse the entry silently, and the segment not survive a restart.
  // `record_bytes`: the metadata the new segment adds to the journal; its live records are held
  // to max_live_bytes (one user to a quarter), so that it stays far below what a restart reads.
  Status MayStore(std::uint32_t uid, std::size_t n, std::size_t record_bytes = 0) const;
  static constexpr std::uint64_t kMaxLiveBytes = std::uint64_t{1} << 30;
  void set_max_live_bytes(std::uint64_t bytes) { max_live_bytes_ = bytes; }
  std::size_t entries() const { return entries_; }

  // The current journal's generation (0 before Restore or after a failure to write one).
  std::uint64_t generation() const {
    return logs_.empty() || logs_.back().removing ? 0 : logs_.back().generation;
  }

 private:
  struct Log {
    std::uint64_t generation = 0;
    UniqueFd fd;
    std::uint64_t tail = 0;
    bool removing = false;  // Its FDSTOREREMOVE is queued: written to until systemd dropped it.
  };
  // Appends `record` to every journal systemd may hold (see Rewrite); on a failure writes a
  // fresh one instead, since a lost delete would bring a segment back at restart.
  // `removing`: the segment being removed, still in the registry, that a rewrite leaves out.
  void Write(std::string_view record, std::uint64_t removing);
  // A new generation holding every named segment; earlier ones are removed from the store and
  // still written to until the removal has reached it. False when it cannot be written: then no
  // journal is left in the store (segments do not survive a restart until a rewrite succeeds).
  bool Rewrite(std::uint64_t removing);
  void Drop(std::uint64_t id);
  void Send(const std::string& name, int fd);

  Notifier& notifier_;
  Registry* registry_ = nullptr;
  std::vector<Log> logs_;  // The current journal last.
  std::uint64_t next_generation_ = 1;
  // Bytes of the live puts, by segment (with its owner): a rewrite is due when the journal is
  // mostly dead. Set by SetPut (size 0: none).
  struct Put {
    std::uint32_t size = 0;
    std::uint32_t uid = 0;
  };
  void SetPut(std::uint64_t id, std::uint32_t uid, std::size_t size);
  std::unordered_map<std::uint64_t, Put> puts_;
  std::uint64_t live_bytes_ = 0;
  std::map<std::uint32_t, std::uint64_t> live_of_;
  std::uint64_t max_live_bytes_ = kMaxLiveBytes;
  std::optional<std::chrono::steady_clock::time_point> last_failure_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // For callbacks left with the notifier.
  // Entries holding memory (seg-<id>, region-<id>), in all and by owner; journals aside.
  void Count(std::uint32_t uid, int delta);
  std::size_t max_entries_ = 65536;
  std::size_t entries_ = 0;
  std::map<std::uint32_t, std::size_t> entries_of_;
  std::unordered_map<std::uint64_t, std::uint32_t> data_owner_;    // Segments with a seg- entry.
  std::unordered_map<std::uint64_t, std::uint32_t> region_owner_;  // Regions with a region- entry.
};

}  // namespace shmbroker::daemon
