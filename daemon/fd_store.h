// Restart survival through systemd's file descriptor store: every segment's metadata goes to
// systemd as a small sealed memfd (FDSTORE=1, FDNAME=meta-<id>), with its memory: the memfd of
// its own region (seg-<id>), or, for a small segment, the shared region it is a block of
// (region-<id>, stored once when the region is made). Unlink removes them (FDSTOREREMOVE=1;
// shared regions stay). A restarted daemon receives them back through $LISTEN_FDS and rebuilds
// its registry; shared regions no segment refers to any more are dropped then.
#pragma once

#include <cstddef>
#include <functional>
#include <vector>

#include "registry.h"
#include "systemd.h"

namespace shmbroker::daemon {

class FdStore {
 public:
  explicit FdStore(Notifier& notifier) : notifier_(notifier) {}

  void Added(const SegmentEntry& s);
  void Removed(const SegmentEntry& s);
  void RegionAdded(const SharedRegion& r);
  // Calls `done` once everything Added or Removed so far is with the service manager; false
  // (without calling it) when it already is. A reply that waits on this keeps its promise across
  // a crash: what was acknowledged is in the store.
  bool WhenStored(std::function<void()> done) { return notifier_.WhenSent(std::move(done)); }

  // Rebuilds `registry` from the stored fds in `fds` (other entries are left alone). Anything
  // inconsistent (a missing half, unreadable metadata, a size mismatch, a duplicate name) is
  // logged, dropped from the store and skipped. Returns the number of segments restored.
  std::size_t Restore(std::vector<ListenFd>& fds, Registry& registry);

 private:
  void Drop(std::uint64_t id);
  void Send(const std::string& name, int fd);
  Notifier& notifier_;
};

}  // namespace shmbroker::daemon
