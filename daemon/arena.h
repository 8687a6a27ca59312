// Small segments share regions. Each (owner uid, gid, mode) has regions of its own, so mapping
// one gives a client access to nothing it could not attach segment by segment. A region is one
// memfd, mapped whole by the clients that use it and by the daemon (to zero freed blocks); a
// segment in it is a block at an offset. Creating or attaching a segment in a region the client
// has mapped then needs no descriptor and no mmap: one round trip.
//
// Blocks come from a buddy allocator per region (powers of two from 64 bytes: cache-line
// aligned, O(log size) to allocate and free, free neighbours merge). A block's pages are reserved
// (fallocate) when it is handed out, so no client ever takes a SIGBUS; a bit per page remembers
// which are, so a block handed out again over kept pages costs no system call. A block goes back
// when its segment is destroyed, i.e. after every attachment and reply in flight let go of it; it
// is zeroed then (memset through the daemon's mapping), or, when a large free block forms and the
// region already keeps enough free memory, its pages go back to the kernel (FALLOC_FL_PUNCH_HOLE;
// holes read as zeros and are reserved again on reuse).
//
// Not thread-safe: the event loop's.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "common/unique_fd.h"
#include "region.h"
#include "shmbroker/status.h"

namespace shmbroker::daemon {

// Who may use a region: segments of the same owner, group and mode only.
struct ArenaKey {
  std::uint32_t uid = 0, gid = 0, mode = 0;
  auto operator<=>(const ArenaKey&) const = default;
};

// One shared region and its allocator.
class SharedRegion {
 public:
  static constexpr int kMinOrder = 6;  // 64-byte blocks: one cache line.
  static constexpr int kMaxOrder = 30;

  // Takes a memfd of `size` bytes (a power of two), sealed against resizing, and maps it.
  static Result<std::shared_ptr<SharedRegion>> Make(std::uint64_t id, ArenaKey key, UniqueFd fd,
                                                    std::uint64_t size);
  ~SharedRegion();
  SharedRegion(const SharedRegion&) = delete;
  SharedRegion& operator=(const SharedRegion&) = delete;

  const std::shared_ptr<Region>& region() const { return region_; }
  const ArenaKey& key() const { return key_; }
  std::uint64_t size() const { return size_; }
  // Bytes in blocks handed out (capacities, not segment sizes).
  std::uint64_t allocated() const { return allocated_; }
  // The daemon's read-write mapping of the whole region (to zero and to copy blocks).
  const std::byte* data() const { return map_; }
  // Bytes of memory the region holds now (its reserved pages, free or not).
  std::uint64_t resident() const;
  // Reserved whole pages that no block handed out touches: free memory kept for reuse, which
  // Trim() can give back. Charged to the region's owner (see Arena::overhead). A page that holds
  // a block smaller than a page is not: that is the price of the block, at most a page.
  std::uint64_t overhead() const { return overhead_; }
  // Told of each change of overhead() (the difference), until reset.
  void set_overhead_sink(std::function<void(std::uint32_t uid, std::int64_t delta)> sink) {
    overhead_sink_ = std::move(sink);
  }
  // Gives every whole free page back to the kernel, below kPunchMinBytes too. Returns the bytes.
  std::uint64_t Trim();
  // A client maps the region whole, read-write, and may write where no block is: memory the
  // daemon never reserved, charged to nobody. Gives such pages back (they hold no block).
  // Returns the bytes.
  std::uint64_t DropStrays();

  static int OrderFor(std::uint64_t bytes);

  // A block of 2^order bytes with its pages reserved: its offset; NOT_FOUND when no free block is
  // large enough, RESOURCE_EXHAUSTED when the memory cannot be reserved.
  Result<std::uint64_t> Allocate(int order);
  // The block at `offset`, for a segment restored after a restart (its bytes are kept).
  // FAILED_PRECONDITION when it is not free (overlap) or misaligned.
  Status Take(std::uint64_t offset, int order);
  // Zeroes the block (or gives its pages back) and makes it free again. In a region that does
  // not reuse memory (see StopReuse), only counts it gone.
  void Free(std::uint64_t offset, int order);

  // From now on, hands out nothing and never writes to or punches freed blocks: a process that
  // this daemon cannot see may still map them (a region adopted after a restart, whose old
  // clients kept their mappings; or the daemon shutting down). `on_empty` is called once no block
  // is allocated any more: the region can then be closed (its memory lives on in the mappings of
  // whoever still has it, as a region of its own would).
  void StopReuse(std::function<void()> on_empty);
  bool reuses() const { return reuse_; }

  // Times pages were reserved (fallocate): a block freed and handed out again over pages the
  // region kept is not reserved again.
  std::uint64_t reservations() const { return reservations_; }

  // Free memory a region keeps resident for reuse before it punches large free blocks.
  static constexpr std::uint64_t kKeepFreeBytes = 8 << 20;
  // Free blocks from this size up may be punched.
  static constexpr std::uint64_t kPunchMinBytes = 64 << 10;

 private:
  SharedRegion(std::uint64_t id, ArenaKey key, UniqueFd fd, std::uint64_t size, void* map);
  static constexpr std::uint64_t kPage = 4096;
  int top() const { return top_; }
  // Whether every page of [offset, offset + length) is reserved.
  bool Resident(std::uint64_t offset, std::uint64_t length) const;
  // Punches the pages of [offset, offset + length), rounded out to whole pages, that are not
  // resident: no block lives on them, yet a client may have written there.
  void PunchStrays(std::uint64_t offset, std::uint64_t length);
  void MarkResident(std::uint64_t offset, std::uint64_t length, bool resident);
  // Counts a block handed out (+1) or back (-1) in the pages it touches.
  void Account(std::uint64_t offset, int order, int delta);
  void Reaccount();
  // Free blocks by order (offsets). Their reserved pages hold zeros.
  std::array<std::set<std::uint64_t>, kMaxOrder + 1> free_;
  // One bit per page: reserved and not punched since; and their bytes.
  std::vector<std::uint64_t> resident_;
  std::uint64_t resident_bytes_ = 0;
  std::uint64_t reservations_ = 0;
  std::shared_ptr<Region> region_;
  ArenaKey key_;
  std::uint64_t size_;
  int top_;
  std::byte* map_;
  std::uint64_t allocated_ = 0;
  bool reuse_ = true;
  std::function<void()> on_empty_;
  std::uint64_t overhead_ = 0;
  std::function<void(std::uint32_t, std::int64_t)> overhead_sink_;
  std::uint64_t large_allocated_ = 0;        // Bytes in blocks of a page or more.
  std::vector<std::uint8_t> small_in_page_;  // Blocks under a page, per page (64 at most).
  std::uint64_t partial_pages_ = 0;          // Pages with at least one of them.
};

// A segment's block; gives itself back to its region when destroyed. Move-only.
class Block {
 public:
  Block(std::shared_ptr<SharedRegion> region, std::uint64_t offset, int order)
      : region_(std::move(region)), offset_(offset), order_(order) {}
  Block(Block&& o) noexcept = default;
  Block& operator=(Block&& o) noexcept {
    if (this != &o) {
      Release();
      region_ = std::move(o.region_);
      offset_ = o.offset_;
      order_ = o.order_;
    }
    return *this;
  }
  ~Block() { Release(); }
  const std::shared_ptr<SharedRegion>& shared_region() const { return region_; }
  std::uint64_t offset() const { return offset_; }
  std::uint64_t capacity() const { return std::uint64_t{1} << order_; }

 private:
  void Release() {
    if (region_) region_->Free(offset_, order_);
    region_.reset();
  }
  std::shared_ptr<SharedRegion> region_;
  std::uint64_t offset_;
  int order_;
};

struct ArenaOptions {
  std::uint64_t region_bytes = 64 << 20;  // A power of two.
  // Seams for tests.
  std::function<int(const char*)> memfd_create;
};

// Every shared region, by key.
class Arena {
 public:
  explicit Arena(ArenaOptions options = {});

  // A block for `bytes` (> 0, at most region_bytes) in one of `key`'s regions; a new region
  // (with id `new_id()`) when none has room. RESOURCE_EXHAUSTED when memory cannot be reserved.
  Result<Block> Allocate(const ArenaKey& key, std::uint64_t bytes,
                         const std::function<std::uint64_t()>& new_id);

  // Restart: a stored region comes back (size from the fd; a power of two up to 1 GiB).
  Status Adopt(std::uint64_t id, UniqueFd fd);
  // The block of a restored segment in adopted region `id`; the first segment claims the region
  // for its key, and the others must have the same.
  Result<Block> Claim(std::uint64_t id, const ArenaKey& key, std::uint64_t offset,
                      std::uint64_t bytes);
  // Adopted regions no segment claimed: closed; their ids returned.
  std::vector<std::uint64_t> DropUnclaimed();
  // Restored regions serve only their restored segments (StopReuse); each is closed, and
  // `on_dropped(id)` told, when its last one goes.
  void RetireAdopted(std::function<void(std::uint64_t)> on_dropped);
  // The daemon is stopping: no region writes to a freed block any more (clients may still map
  // them).
  void Freeze();
  ~Arena();

  struct Totals {
    std::uint64_t regions = 0;
    std::uint64_t resident = 0;   // Memory the regions hold.
    std::uint64_t allocated = 0;  // Of it, in blocks handed out.
  };
  Totals totals() const;
  void ForEachRegion(const std::function<void(const SharedRegion&)>& fn) const {
    for (const auto& entry : by_id_) fn(*entry.second);
  }
  // Reserved bytes in `uid`'s regions that no block holds (SharedRegion::overhead), and in all
  // regions: the caps count them, since the daemon holds that memory for the user.
  std::uint64_t overhead(std::uint32_t uid) const {
    auto it = overhead_.find(uid);
    return it == overhead_.end() ? 0 : it->second;
  }
  std::uint64_t overhead() const { return overhead_total_; }
  // Gives the whole free pages of `uid`'s regions (of every region when nullopt) back to the
  // kernel: before a create is refused for a cap. Returns the bytes.
  std::uint64_t Trim(std::optional<std::uint32_t> uid);
  // SharedRegion::DropStrays of up to `max_regions` regions, from where the last call stopped:
  // what was given back, by owner uid (none when nothing was).
  std::map<std::uint32_t, std::uint64_t> DropStrays(std::size_t max_regions);
  // Told of each new region (not of adopted ones), e.g. to store it in systemd's fd store.
  std::function<void(const SharedRegion&)> on_region;

 private:
  Result<std::shared_ptr<SharedRegion>> NewRegion(const ArenaKey& key, std::uint64_t id);

  ArenaOptions options_;
  std::map<ArenaKey, std::vector<std::shared_ptr<SharedRegion>>> regions_;
  std::map<std::uint64_t, std::shared_ptr<SharedRegion>> by_id_;
  std::map<std::uint64_t, std::pair<UniqueFd, std::uint64_t>> adopted_;  // Not yet claimed.
  void Watch(SharedRegion& region);
  void AddOverhead(std::uint32_t uid, std::int64_t delta);
  std::map<std::uint32_t, std::uint64_t> overhead_;
  std::uint64_t overhead_total_ = 0;
  std::uint64_t strays_after_id_ = 0;  // Where DropStrays goes on.
};

}  // namespace shmbroker::daemon
