#include "fd_budget.h"

#include <sys/resource.h>

#include <algorithm>
#include <filesystem>

#include "pool.h"
#include "region.h"

namespace shmbroker::daemon {
namespace {

// Kept below even root's reach: enough to accept one more connection to refuse it politely.
constexpr std::uint64_t kFloor = 8;

std::uint64_t CountOpenFds() {
  std::uint64_t n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return n;
}

}  // namespace

FdBudget::FdBudget(std::uint64_t limit, std::uint64_t base) : limit_(limit), base_(base) {
  if (limit_ == 0) {
    struct rlimit rl {};
    limit_ = ::getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
  }
  if (base_ == 0) base_ = CountOpenFds() + 4;  // + the spare and a worker's in-flight ones.
  // 5% of the limit, at least 32: room for root's tools and the creates of clients already in.
  reserve_ = std::max<std::uint64_t>(32, limit_ / 20);
}

std::uint64_t FdBudget::in_use() const {
  return base_ + connections_ + watches_ + Region::open_fds() + WarmPool::open_fds();
}

void FdBudget::WatchClosed(std::uint32_t uid) {
  --watches_;
  auto it = watches_of_.find(uid);
  if (it != watches_of_.end() && --it->second == 0) watches_of_.erase(it);
}

bool FdBudget::MayWatch(std::uint32_t uid) const {
  if (in_use() + 1 > limit_ - std::min(limit_, reserve_)) return false;
  auto it = watches_of_.find(uid);
  return it == watches_of_.end() || it->second < per_user() / 2;
}

bool FdBudget::MayAccept(std::uint32_t uid) const {
  std::uint64_t ceiling = uid == 0 ? limit_ - std::min(limit_, kFloor) : limit_ - reserve_;
  return in_use() + 1 <= ceiling;
}

std::uint64_t FdBudget::per_user() const {
  return std::max<std::uint64_t>(kFloor, (limit_ - std::min(limit_, reserve_)) / 4);
}

Status FdBudget::MayOpen(std::uint32_t uid, std::uint64_t n) const {
  std::uint64_t ceiling = uid == 0 ? limit_ - std::min(limit_, kFloor) : limit_ - reserve_;
  if (uid != 0 && Region::open_fds_of(uid) + n > per_user()) {
    return Status::ResourceExhausted(
        "uid " + std::to_string(uid) + " holds " + std::to_string(Region::open_fds_of(uid)) +
        " of the daemon's descriptors for its segments, the most one user may (a quarter of " +
        "its open-file limit " + std::to_string(limit_) +
        " below the reserve); unlink segments it does not need, or use smaller ones (small "
        "segments share descriptors)");
  }
  if (in_use() + n <= ceiling) return Status::Ok();
  return Status::ResourceExhausted(
      "the daemon is near its limit of open files (" + std::to_string(in_use()) + " of " +
      std::to_string(limit_) + " in use, " + std::to_string(reserve_) +
      " kept for root and for connected clients); unlink segments nobody needs, or raise the "
      "daemon's LimitNOFILE");
}

}  // namespace shmbroker::daemon
