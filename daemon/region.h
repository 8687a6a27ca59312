// A region: a memfd the daemon hands to clients, who map it whole and find segments in it at an
// (offset, length). A large segment's region is its own and charged (given a ledger) to the
// segment's owner until the region is destroyed; a shared region (see Arena) charges nothing,
// its segments carry their own charges.
//
// Descriptors: the read-write one, and a read-only one reopened on first use (a reader gets only
// that one, so the kernel refuses it writable mappings). On the wire a region id names a (region,
// access) pair: id * 2 + 1 read-write, id * 2 read-only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>

#include "common/unique_fd.h"
#include "ledger.h"
#include "shmbroker/status.h"
#include "shmbroker/types.h"

namespace shmbroker::daemon {

class Region {
 public:
  // Charges `size` bytes to `owner` in `ledger` (if any) for as long as the region lives.
  Region(std::uint64_t id, UniqueFd memfd, std::uint64_t size,
         std::shared_ptr<Ledger> ledger = nullptr, std::uint32_t owner = 0);
  ~Region();
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  std::uint64_t id() const { return id_; }
  std::uint64_t size() const { return size_; }
  // The memfd's inode: how a process's /proc/PID/maps names a mapping of this region.
  std::uint64_t inode() const { return inode_; }
  std::uint64_t WireId(Access access) const { return id_ * 2 + (access == Access::kReadWrite); }

  // The read-write memfd (-1 once dropped).
  int memfd() const { return rw_.get(); }
  // The descriptor to hand out for `access`.
  Result<int> Fd(Access access);
  // Closes the descriptors: nobody will be sent this region again. The memory lives on in the
  // mappings of the clients that have it.
  void DropFds();

  // The region's segment was unlinked: nobody can attach it any more, so its descriptors close
  // as soon as no reply in flight carries them (see Pin), and the ledger counts it as unlinked.
  void Retire();
  bool retired() const { return retired_; }

  // Keeps the descriptors open while a reply that carries them waits to be sent.
  class Pin {
   public:
    explicit Pin(std::shared_ptr<Region> region);
    Pin(Pin&& o) noexcept = default;
    Pin& operator=(Pin&& o) noexcept;
    ~Pin();

   private:
    void Release();
    std::shared_ptr<Region> region_;
  };

  // Where the read-write memfd goes when the region is destroyed, i.e. when nobody may map it
  // any more, instead of being closed: the warm pool. `recycle(fd, size, huge_bytes)`. With one
  // set, retiring closes only the read-only descriptor and keeps the other (never handed out
  // again) for then. Cleared when the memory can never serve another segment (sealed).
  using Recycler = std::function<void(UniqueFd, std::uint64_t, std::uint64_t)>;
  void set_recycler(Recycler recycler) { recycler_ = std::move(recycler); }
  void clear_recycler();
  bool recyclable() const { return static_cast<bool>(recycler_); }

  // Descriptors all regions hold now (for the daemon's fd budget), and those of `owner`'s regions
  // (of its own segments, and its shared regions: one per group and mode it uses).
  static std::size_t open_fds() { return open_fds_; }
  static std::size_t open_fds_of(std::uint32_t owner) {
    auto it = open_fds_by_owner_.find(owner);
    return it == open_fds_by_owner_.end() ? 0 : it->second;
  }
  // Of its memory, how much is backed by 2 MiB pages; and over all regions alive now.
  void set_huge_bytes(std::uint64_t bytes);
  static std::uint64_t huge_bytes_total() { return huge_total_; }

 private:
  void Set(UniqueFd& slot, UniqueFd fd);
  void CountFds(int delta);

  const std::uint64_t id_;
  const std::uint64_t size_;
  std::uint64_t inode_ = 0;
  UniqueFd rw_, ro_;
  UniqueFd kept_;  // The read-write memfd of a retired region, for the recycler.
  Recycler recycler_;
  std::shared_ptr<Ledger> ledger_;
  const std::uint32_t owner_;
  bool retired_ = false;
  int pins_ = 0;
  std::uint64_t huge_bytes_ = 0;
  static std::size_t open_fds_;  // The event loop's thread only.
  static std::map<std::uint32_t, std::size_t> open_fds_by_owner_;
  static std::uint64_t huge_total_;
};

}  // namespace shmbroker::daemon
