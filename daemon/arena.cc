#include "arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <string>

#include <spdlog/spdlog.h>

#include "common/posix.h"
#include "common/units.h"
#include "memfd.h"

namespace shmbroker::daemon {
namespace {

int Fallocate(int fd, int mode, std::uint64_t offset, std::uint64_t length) {
  int rc;
  do {
    rc = ::fallocate(fd, mode, static_cast<off_t>(offset), static_cast<off_t>(length));
  } while (rc != 0 && errno == EINTR);
  return rc;
}

std::string KeyText(const ArenaKey& k) {
  return "uid " + std::to_string(k.uid) + " gid " + std::to_string(k.gid) + " mode " +
         ModeString(k.mode);
}

}  // namespace

int SharedRegion::OrderFor(std::uint64_t bytes) {
  if (bytes <= (std::uint64_t{1} << kMinOrder)) return kMinOrder;
  return std::bit_width(bytes - 1);
}

Result<std::shared_ptr<SharedRegion>> SharedRegion::Make(std::uint64_t id, ArenaKey key,
                                                         UniqueFd fd, std::uint64_t size) {
  if (!std::has_single_bit(size) || size < (std::uint64_t{1} << kMinOrder) ||
      size > (std::uint64_t{1} << kMaxOrder)) {
    return Status::InvalidArgument("a shared region of " + std::to_string(size) +
                                   " bytes is not a power of two of 64 B to 1 GiB");
  }
  void* map = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (map == MAP_FAILED) return PosixError("mmap of a shared region", errno);
  return std::shared_ptr<SharedRegion>(new SharedRegion(id, key, std::move(fd), size, map));
}

SharedRegion::SharedRegion(std::uint64_t id, ArenaKey key, UniqueFd fd, std::uint64_t size,
                           void* map)
    // No charge (its blocks are charged), but its descriptors are its owner's.
    : region_(std::make_shared<Region>(id, std::move(fd), size, nullptr, key.uid)),
      key_(key),
      size_(size),
      top_(std::countr_zero(size)),
      map_(static_cast<std::byte*>(map)) {
  resident_.assign((size + kPage * 64 - 1) / (kPage * 64), 0);
  small_in_page_.assign((size + kPage - 1) / kPage, 0);
  free_[top_].insert(0);
}

SharedRegion::~SharedRegion() { ::munmap(map_, size_); }

std::uint64_t SharedRegion::resident() const {
  struct stat st {};
  if (::fstat(region_->memfd(), &st) != 0) return 0;
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

bool SharedRegion::Resident(std::uint64_t offset, std::uint64_t length) const {
  for (std::uint64_t p = offset / kPage; p <= (offset + length - 1) / kPage; ++p) {
    if ((resident_[p / 64] >> (p % 64) & 1) == 0) return false;
  }
  return true;
}

void SharedRegion::MarkResident(std::uint64_t offset, std::uint64_t length, bool resident) {
  for (std::uint64_t p = offset / kPage; p <= (offset + length - 1) / kPage; ++p) {
    std::uint64_t& word = resident_[p / 64];
    const std::uint64_t bit = std::uint64_t{1} << (p % 64);
    if (((word & bit) != 0) == resident) continue;
    word ^= bit;
    if (resident) {
      resident_bytes_ += kPage;
    } else {
      resident_bytes_ -= kPage;
    }
  }
}

Result<std::uint64_t> SharedRegion::Allocate(int order) {
  if (!reuse_) return Status::NotFound("the region hands out no blocks");
  int j = order;
  while (j <= top_ && free_[j].empty()) ++j;
  if (j > top_) return Status::NotFound("no free block");
  std::uint64_t offset = *free_[j].begin();
  free_[j].erase(free_[j].begin());
  while (j > order) {  // Split: keep the lower half, free the upper.
    --j;
    free_[j].insert(offset + (std::uint64_t{1} << j));
  }
  std::uint64_t length = std::uint64_t{1} << order;
  if (!Resident(offset, length)) {
    ++reservations_;
    // So that the block reads zeros; only when a client wrote where no block is (the region
    // holds more than the daemon reserved): a punch walks every mapping of the range.
    if (resident() > resident_bytes_) PunchStrays(offset, length);
    if (Fallocate(region_->memfd(), 0, offset, length) != 0) {
      int err = errno;
      allocated_ += length;  // Free() takes it off again (no client saw it: nothing to zero).
      Account(offset, order, +1);
      Free(offset, order);
      return Status::ResourceExhausted("cannot reserve " + std::to_string(length) +
                                       " bytes: " + std::strerror(err));
    }
    MarkResident(offset, length, true);
  }
  allocated_ += length;
  Account(offset, order, +1);
  Reaccount();
  return offset;
}

Status SharedRegion::Take(std::uint64_t offset, int order) {
  std::uint64_t length = std::uint64_t{1} << order;
  if (order < kMinOrder || order > top_ || offset % length != 0 || offset >= size_) {
    return Status::FailedPrecondition("block " + std::to_string(offset) + "+" +
                                      std::to_string(length) + " does not fit the region");
  }
  // Find the free block that contains it, then split down to it.
  int j = order;
  std::uint64_t start = offset;
  for (; j <= top_; ++j) {
    start = offset & ~((std::uint64_t{1} << j) - 1);
    if (free_[j].count(start) != 0) break;
  }
  if (j > top_) {
    return Status::FailedPrecondition("block " + std::to_string(offset) + "+" +
                                      std::to_string(length) + " overlaps another");
  }
  free_[j].erase(start);
  while (j > order) {
    --j;
    std::uint64_t half = std::uint64_t{1} << j;
    // Keep the half holding `offset`, free the other.
    if (offset >= start + half) {
      free_[j].insert(start);
      start += half;
    } else {
      free_[j].insert(start + half);
    }
  }
  MarkResident(offset, length, true);  // Its bytes came back with it.
  allocated_ += length;
  Account(offset, order, +1);
  Reaccount();
  return Status::Ok();
}

void SharedRegion::StopReuse(std::function<void()> on_empty) {
  reuse_ = false;
  on_empty_ = std::move(on_empty);
  if (allocated_ == 0 && on_empty_) std::exchange(on_empty_, nullptr)();
}

void SharedRegion::Free(std::uint64_t offset, int order) {
  const std::uint64_t freed = offset, freed_length = std::uint64_t{1} << order;
  allocated_ -= freed_length;
  Account(offset, order, -1);
  if (!reuse_) {
    Reaccount();
    if (allocated_ == 0 && on_empty_) std::exchange(on_empty_, nullptr)();
    return;
  }
  // Merge with free buddies.
  while (order < top_) {
    auto it = free_[order].find(offset ^ (std::uint64_t{1} << order));
    if (it == free_[order].end()) break;
    offset = std::min(offset, *it);
    free_[order].erase(it);
    ++order;
  }
  std::uint64_t length = std::uint64_t{1} << order;
  // Large free blocks go back to the kernel once the region keeps enough free memory.
  bool punch = length >= kPunchMinBytes && resident_bytes_ > allocated_ + kKeepFreeBytes;
  if (punch && Fallocate(region_->memfd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
                         length) == 0) {
    MarkResident(offset, length, false);
  } else if (Resident(freed, freed_length)) {
    // Holes read as zeros, and the rest of the block was zeroed when freed: only this part
    // holds old bytes. (Not resident: a reservation that failed, which no client saw.)
    std::memset(map_ + freed, 0, freed_length);
  }
  free_[order].insert(offset);
  Reaccount();
}

void SharedRegion::Account(std::uint64_t offset, int order, int delta) {
  std::uint64_t length = std::uint64_t{1} << order;
  if (length >= kPage) {
    large_allocated_ = delta > 0 ? large_allocated_ + length : large_allocated_ - length;
    return;
  }
  std::uint8_t& n = small_in_page_[offset / kPage];
  if (delta > 0 && n++ == 0) ++partial_pages_;
  if (delta < 0 && --n == 0) --partial_pages_;
}

void SharedRegion::Reaccount() {
  std::uint64_t used = large_allocated_ + partial_pages_ * kPage;
  std::uint64_t now = resident_bytes_ > used ? resident_bytes_ - used : 0;
  if (now == overhead_) return;
  if (overhead_sink_) {
    overhead_sink_(key_.uid, static_cast<std::int64_t>(now) - static_cast<std::int64_t>(overhead_));
  }
  overhead_ = now;
}

void SharedRegion::PunchStrays(std::uint64_t offset, std::uint64_t length) {
  const std::uint64_t last = (offset + length - 1) / kPage;
  for (std::uint64_t p = offset / kPage; p <= last; ++p) {
    if (Resident(p * kPage, kPage)) continue;
    std::uint64_t end = p + 1;  // Runs of pages in one call.
    while (end <= last && !Resident(end * kPage, kPage)) ++end;
    (void)Fallocate(region_->memfd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, p * kPage,
                    (end - p) * kPage);
    p = end;
  }
}

std::uint64_t SharedRegion::DropStrays() {
  if (!reuse_) return 0;  // Its freed blocks are never touched (see StopReuse).
  std::uint64_t before = resident();
  if (before <= resident_bytes_) return 0;
  PunchStrays(0, size_);
  std::uint64_t after = resident();
  return before > after ? before - after : 0;
}

std::uint64_t SharedRegion::Trim() {
  if (!reuse_) return 0;  // Its freed blocks are never touched (see StopReuse).
  std::uint64_t released = 0;
  for (int order = kMinOrder; order <= top_; ++order) {
    std::uint64_t length = std::uint64_t{1} << order;
    for (std::uint64_t offset : free_[order]) {
      // The whole pages inside the free block; a page that a live block shares stays.
      std::uint64_t lo = (offset + kPage - 1) / kPage * kPage,
                    hi = (offset + length) / kPage * kPage;
      for (std::uint64_t p = lo; p < hi; p += kPage) {
        if (!Resident(p, kPage)) continue;
        std::uint64_t end = p + kPage;  // Runs of resident pages in one call.
        while (end < hi && Resident(end, kPage)) end += kPage;
        if (Fallocate(region_->memfd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, p, end - p) ==
            0) {
          MarkResident(p, end - p, false);
          released += end - p;
        }
        p = end - kPage;
      }
    }
  }
  Reaccount();
  return released;
}

Arena::Arena(ArenaOptions options) : options_(std::move(options)) {
  if (!options_.memfd_create) options_.memfd_create = [](const char* l) { return MemfdCreate(l); };
}

Result<std::shared_ptr<SharedRegion>> Arena::NewRegion(const ArenaKey& key, std::uint64_t id) {
  UniqueFd fd(options_.memfd_create(("shmbroker-region:" + KeyText(key)).c_str()));
  if (!fd) return PosixError("memfd_create", errno);
  // Sized once and sealed so: a client cannot shrink it under others (SIGBUS). The pages are
  // reserved block by block. 0600: readers of other uids get only the read-only reopen.
  if (::ftruncate(fd.get(), static_cast<off_t>(options_.region_bytes)) != 0) {
    return PosixError("ftruncate", errno);
  }
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) != 0) {
    return PosixError("F_ADD_SEALS", errno);
  }
  if (::fchmod(fd.get(), 0600) != 0) return PosixError("fchmod", errno);
  auto region = SharedRegion::Make(id, key, std::move(fd), options_.region_bytes);
  if (!region.ok()) return region.status();
  Watch(**region);
  regions_[key].push_back(*region);
  by_id_.emplace(id, *region);
  spdlog::debug("new shared region {} for {}", id, KeyText(key));
  if (on_region) on_region(**region);
  return region;
}

Result<Block> Arena::Allocate(const ArenaKey& key, std::uint64_t bytes,
                              const std::function<std::uint64_t()>& new_id) {
  // Zero bytes take the smallest block: a segment of its own would cost a descriptor for nothing.
  if (bytes > options_.region_bytes) {
    return Status::Internal("a block of " + std::to_string(bytes) + " bytes from the arena");
  }
  int order = SharedRegion::OrderFor(bytes);
  auto& list = regions_[key];
  // Few regions per key: the newest first, where the room most likely is.
  for (auto it = list.rbegin(); it != list.rend(); ++it) {
    auto offset = (*it)->Allocate(order);
    if (offset.ok()) return Block(*it, *offset, order);
    if (offset.status().code() != Code::kNotFound) return offset.status();
  }
  auto region = NewRegion(key, new_id());
  if (!region.ok()) return region.status();
  auto offset = (*region)->Allocate(order);
  if (!offset.ok()) return offset.status();
  return Block(*region, *offset, order);
}

Status Arena::Adopt(std::uint64_t id, UniqueFd fd) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return Status::FailedPrecondition("region " + std::to_string(id) + " is not a memfd");
  }
  auto size = static_cast<std::uint64_t>(st.st_size);
  if (!std::has_single_bit(size) || size > (std::uint64_t{1} << SharedRegion::kMaxOrder)) {
    return Status::FailedPrecondition("region " + std::to_string(id) + " has a bad size (" +
                                      std::to_string(size) + " bytes)");
  }
  int seals = ::fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0 || (seals & (F_SEAL_GROW | F_SEAL_SHRINK)) != (F_SEAL_GROW | F_SEAL_SHRINK)) {
    return Status::FailedPrecondition("region " + std::to_string(id) + " is not sealed");
  }
  if (by_id_.count(id) != 0 || adopted_.count(id) != 0) {
    return Status::FailedPrecondition("region " + std::to_string(id) + " came twice");
  }
  adopted_.emplace(id, std::make_pair(std::move(fd), size));
  return Status::Ok();
}

Result<Block> Arena::Claim(std::uint64_t id, const ArenaKey& key, std::uint64_t offset,
                           std::uint64_t bytes) {
  auto it = by_id_.find(id);
  if (it == by_id_.end()) {
    auto a = adopted_.find(id);
    if (a == adopted_.end()) {
      return Status::FailedPrecondition("its region " + std::to_string(id) + " is missing");
    }
    auto region = SharedRegion::Make(id, key, std::move(a->second.first), a->second.second);
    adopted_.erase(a);
    if (!region.ok()) return region.status();
    Watch(**region);
    regions_[key].push_back(*region);
    it = by_id_.emplace(id, *region).first;
  }
  SharedRegion& r = *it->second;
  if (r.key() != key) {
    return Status::FailedPrecondition("its region " + std::to_string(id) + " belongs to " +
                                      KeyText(r.key()) + ", not " + KeyText(key));
  }
  if (bytes > r.size()) {
    return Status::FailedPrecondition(std::to_string(bytes) + " bytes do not fit region " +
                                      std::to_string(id));
  }
  int order = SharedRegion::OrderFor(bytes);
  if (Status s = r.Take(offset, order); !s.ok()) return s;
  return Block(it->second, offset, order);
}

std::vector<std::uint64_t> Arena::DropUnclaimed() {
  std::vector<std::uint64_t> ids;
  for (const auto& entry : adopted_) ids.push_back(entry.first);
  adopted_.clear();
  return ids;
}

void Arena::RetireAdopted(std::function<void(std::uint64_t)> on_dropped) {
  std::vector<std::shared_ptr<SharedRegion>> regions;
  for (auto& entry : by_id_) regions.push_back(entry.second);
  for (auto& region : regions) {
    SharedRegion& r = *region;
    if (!r.reuses()) continue;
    std::uint64_t id = r.region()->id();
    // Called from a Block's destructor: the region outlives the call through that Block.
    r.StopReuse([this, id, on_dropped] {
      auto it = by_id_.find(id);
      if (it == by_id_.end()) return;
      SharedRegion& gone = *it->second;
      // Nothing of it is the daemon's to hold now.
      AddOverhead(gone.key().uid, -static_cast<std::int64_t>(gone.overhead()));
      gone.set_overhead_sink(nullptr);
      auto& list = regions_[gone.key()];
      std::erase(list, it->second);
      by_id_.erase(it);
      if (on_dropped) on_dropped(id);
    });
  }
}

void Arena::Freeze() {
  for (auto& entry : by_id_) entry.second->StopReuse(nullptr);
}

Arena::~Arena() {
  Freeze();
  // Blocks may outlive the arena (segments still held): their regions report no more.
  for (auto& entry : by_id_) entry.second->set_overhead_sink(nullptr);
}

void Arena::Watch(SharedRegion& region) {
  region.set_overhead_sink(
      [this](std::uint32_t uid, std::int64_t delta) { AddOverhead(uid, delta); });
}

void Arena::AddOverhead(std::uint32_t uid, std::int64_t delta) {
  std::uint64_t& mine = overhead_[uid];
  mine = static_cast<std::uint64_t>(static_cast<std::int64_t>(mine) + delta);
  overhead_total_ = static_cast<std::uint64_t>(static_cast<std::int64_t>(overhead_total_) + delta);
  if (mine == 0) overhead_.erase(uid);
}

std::uint64_t Arena::Trim(std::optional<std::uint32_t> uid) {
  std::uint64_t released = 0;
  for (auto& [key, list] : regions_) {
    if (uid && key.uid != *uid) continue;
    for (auto& region : list) released += region->Trim() + region->DropStrays();
  }
  return released;
}

std::map<std::uint32_t, std::uint64_t> Arena::DropStrays(std::size_t max_regions) {
  std::map<std::uint32_t, std::uint64_t> dropped;
  auto it = by_id_.upper_bound(strays_after_id_);
  for (std::size_t n = 0; n < max_regions && !by_id_.empty(); ++n) {
    if (it == by_id_.end()) it = by_id_.begin();
    if (std::uint64_t bytes = it->second->DropStrays(); bytes > 0) {
      dropped[it->second->key().uid] += bytes;
    }
    strays_after_id_ = it->first;
    ++it;
    if (n + 1 >= by_id_.size()) break;  // Each once.
  }
  return dropped;
}

Arena::Totals Arena::totals() const {
  Totals t;
  for (const auto& entry : by_id_) {
    ++t.regions;
    t.resident += entry.second->resident();
    t.allocated += entry.second->allocated();
  }
  return t;
}

}  // namespace shmbroker::daemon
