#include "pool.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include <spdlog/spdlog.h>

#include "common/map_aligned.h"
#include "common/posix.h"
#include "common/units.h"

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

namespace shmbroker::daemon {
namespace {

// Seals that make a used memfd unfit for a new segment: it could not be written, or not sealed
// by its new owner. A holder of the read-write descriptor may add them at any time.
constexpr int kBadSeals = F_SEAL_WRITE | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL;
constexpr int kSizeSeals = F_SEAL_GROW | F_SEAL_SHRINK;

Status CheckSeals(int fd) {
  int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) return PosixError("F_GET_SEALS", errno);
  if ((seals & kBadSeals) != 0 || (seals & kSizeSeals) != kSizeSeals) {
    return Status::FailedPrecondition("a pooled memfd carries seals " + std::to_string(seals));
  }
  return Status::Ok();
}

}  // namespace

std::size_t WarmPool::open_fds_ = 0;

Result<std::uint64_t> ZeroMemfd(int fd, std::uint64_t size) {
  // A former holder may have punched holes (allowed under the size seals): reserve them again,
  // so that the next owner can never take a SIGBUS. Cheap where every page is there.
  int rc;
  do {
    rc = ::fallocate(fd, 0, 0, static_cast<off_t>(size));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return PosixError("fallocate", errno);
  // memset through a mapping keeps the pages, 2 MiB ones included; punching and reserving again
  // would give them back and lose the 2 MiB pages (and the warmth) that the pool is for.
  // Whole pages: smaps shows the mapping so, and PmdMappedBytes looks for exactly its range.
  static const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  std::size_t length = (size + page - 1) & ~(page - 1);
  void* addr = MapAligned(fd, length, PROT_READ | PROT_WRITE, kHugePageBytes);
  if (addr == MAP_FAILED) return PosixError("mmap", errno);
  std::memset(addr, 0, size);
  std::uint64_t huge = PmdMappedBytes(addr, length);
  ::munmap(addr, length);
  return huge;
}

Result<SegmentMemory> AdoptPooled(PoolEntry& entry, std::uint64_t size) {
  if (entry.state.load(std::memory_order_acquire) != PoolEntry::kReady) {
    return Status::FailedPrecondition("the pooled memfd could not be zeroed");
  }
  int fd = entry.fd.get();
  if (!entry.key) {
    // --prealloc memory: never handed out, so not sealed yet. The rest goes back to the kernel.
    if (size < entry.size && ::ftruncate(fd, static_cast<off_t>(size)) != 0) {
      return PosixError("ftruncate", errno);
    }
    if (::fcntl(fd, F_ADD_SEALS, kSizeSeals) != 0) return PosixError("F_ADD_SEALS", errno);
    entry.huge_bytes = std::min(entry.huge_bytes, size & ~(kHugePageBytes - 1));
  } else {
    if (size != entry.size) return Status::Internal("a pooled memfd of another size");
    // Again: a former holder may have sealed it since it was zeroed.
    if (Status s = CheckSeals(fd); !s.ok()) return s;
  }
  entry.adopted = true;
  return SegmentMemory{std::move(entry.fd), entry.huge_bytes};
}

void WarmPool::Put(const ArenaKey& key, UniqueFd fd, std::uint64_t size, std::uint64_t huge_bytes) {
  if (!Keeps(size) || !CheckSeals(fd.get()).ok()) return;  // Closed here.
  if (bytes_ + size > max_bytes_) {
    // Newest in, oldest out: the bytes released by eviction count like any other release.
    Evict(bytes_ + size - max_bytes_);
  }
  auto entry = std::make_shared<PoolEntry>();
  entry->fd = std::move(fd);
  entry->size = size;
  entry->huge_bytes = huge_bytes;
  entry->key = key;
  entries_.push_back(entry);
  bytes_ += size;
  ++open_fds_;
  auto zero = [entry] {
    auto start = std::chrono::steady_clock::now();
    auto huge = ZeroMemfd(entry->fd.get(), entry->size);
    spdlog::debug("warm pool: zeroed {} ({} on 2 MiB pages) in {} us", HumanBytes(entry->size),
                  HumanBytes(huge.ok() ? *huge : 0),
                  std::chrono::duration_cast<std::chrono::microseconds>(
                      std::chrono::steady_clock::now() - start)
                      .count());
    if (huge.ok()) entry->huge_bytes = *huge;
    entry->state.store(huge.ok() ? PoolEntry::kReady : PoolEntry::kFailed,
                       std::memory_order_release);
    if (!huge.ok()) spdlog::warn("warm pool: {}", huge.status().message());
  };
  if (!offload_) {
    zero();
    if (entry->state != PoolEntry::kReady) Remove(std::prev(entries_.end()));
    return;
  }
  offload_(std::move(zero), [this, weak = std::weak_ptr<PoolEntry>(entry)] {
    auto e = weak.lock();
    if (!e || e->state != PoolEntry::kFailed) return;
    auto it = std::find(entries_.begin(), entries_.end(), e);
    if (it != entries_.end()) Remove(it);
  });
}

void WarmPool::PutUnowned(UniqueFd fd, std::uint64_t size, std::uint64_t huge_bytes) {
  if (closed_) return;
  auto entry = std::make_shared<PoolEntry>();
  entry->fd = std::move(fd);
  entry->size = size;
  entry->huge_bytes = huge_bytes;
  entry->state = PoolEntry::kReady;
  entries_.push_back(std::move(entry));
  bytes_ += size;
  ++open_fds_;
}

std::shared_ptr<PoolEntry> WarmPool::Take(const ArenaKey& key, std::uint64_t size) {
  auto best = entries_.end();
  // Newest first: the warmest memory.
  for (auto it = entries_.end(); it != entries_.begin();) {
    --it;
    const PoolEntry& e = **it;
    if (e.state == PoolEntry::kFailed) continue;
    if (e.key) {
      if (*e.key == key && e.size == size) {
        best = it;
        break;
      }
    } else if (e.size >= size && (best == entries_.end() || e.size < (*best)->size)) {
      best = it;  // Unowned: keep looking for one of the class.
    }
  }
  if (best == entries_.end()) return nullptr;
  std::shared_ptr<PoolEntry> entry = *best;
  bytes_ -= entry->size;
  --open_fds_;
  entries_.erase(best);
  return entry;
}

void WarmPool::Return(std::shared_ptr<PoolEntry> entry) {
  if (closed_ || !entry || !entry->fd) return;
  bytes_ += entry->size;
  ++open_fds_;
  entries_.push_back(std::move(entry));
}

void WarmPool::Remove(std::list<std::shared_ptr<PoolEntry>>::iterator it) {
  bytes_ -= (*it)->size;
  --open_fds_;
  released_bytes_ += (*it)->size;
  // The zeroing job may still hold it: the fd closes with its last reference.
  entries_.erase(it);
}

WarmPool::Released WarmPool::Evict(std::uint64_t bytes, std::optional<std::uint32_t> uid) {
  Released r;
  for (auto it = entries_.begin(); it != entries_.end() && r.bytes < bytes;) {
    if (uid && (!(*it)->key || (*it)->key->uid != *uid)) {
      ++it;
      continue;
    }
    r.bytes += (*it)->size;
    ++r.segments;
    auto next = std::next(it);
    Remove(it);
    it = next;
  }
  if (r.segments > 0) {
    spdlog::info("warm pool: released {} in {} memfd{}", HumanBytes(r.bytes), r.segments,
                 r.segments == 1 ? "" : "s");
  }
  return r;
}

void WarmPool::Close() {
  closed_ = true;
  open_fds_ -= entries_.size();
  entries_.clear();
  bytes_ = 0;
}

}  // namespace shmbroker::daemon
