// The daemon's file descriptors as a budget: a reserve at the top of RLIMIT_NOFILE that only root
// and the work of clients already connected may use, so that a flood of connections or creates by
// one user can never take the descriptors everyone else needs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>

#include "shmbroker/status.h"

namespace shmbroker::daemon {

class FdBudget {
 public:
  // `limit`: RLIMIT_NOFILE (0: read it now); `base`: descriptors open besides connections and
  // segment memory (0: count /proc/self/fd now).
  explicit FdBudget(std::uint64_t limit = 0, std::uint64_t base = 0);

  std::uint64_t limit() const { return limit_; }
  // The top of the limit kept for root and for clients already connected.
  std::uint64_t reserve() const { return reserve_; }
  std::uint64_t in_use() const;

  // Whether a new connection of `uid` may be taken: everyone below the reserve, root into it (but
  // not the last few, kept to refuse politely).
  bool MayAccept(std::uint32_t uid) const;
  // OK when `uid` may open `n` more descriptors for segment memory; RESOURCE_EXHAUSTED otherwise:
  // past the reserve, or past per_user() for its own segments (root is exempt), so that one user
  // cannot take the descriptors everyone else's large segments need.
  Status MayOpen(std::uint32_t uid, std::uint64_t n) const;
  // A quarter of what is below the reserve.
  std::uint64_t per_user() const;

  void ConnectionOpened() { ++connections_; }
  void ConnectionClosed() { --connections_; }
  // Whether a pidfd may watch one more process of `uid` (whose exit releases what it held): each
  // user's watches take at most half its quarter, apart from the descriptors its segments may
  // use (past it, the daemon looks at the process once a second instead).
  bool MayWatch(std::uint32_t uid) const;
  void WatchOpened(std::uint32_t uid) {
    ++watches_;
    ++watches_of_[uid];
  }
  void WatchClosed(std::uint32_t uid);

 private:
  std::uint64_t limit_, base_, reserve_;
  std::uint64_t connections_ = 0;
  std::uint64_t watches_ = 0;
  std::map<std::uint32_t, std::uint64_t> watches_of_;
};

}  // namespace shmbroker::daemon
