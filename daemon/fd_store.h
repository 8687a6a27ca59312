// Restart survival through systemd's file descriptor store: every segment's memfd is handed to
// systemd (FDSTORE=1, FDNAME=seg-<id>) together with a small sealed memfd holding its metadata
// (meta-<id>), and removed on unlink (FDSTOREREMOVE=1). A restarted daemon receives them back
// through $LISTEN_FDS and rebuilds its registry.
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
  Notifier& notifier_;
};

}  // namespace shmbroker::daemon
