// A segment as the daemon keeps it: its spec (name, dtype, shape, order, mode, attributes), its
// owner, its memory and who holds it. Owned by the Registry; attachments and replies in flight
// hold references, so the memory outlives an unlink while it is in use.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "arena.h"
#include "credentials.h"
#include "ledger.h"
#include "region.h"
#include "shmbroker/status.h"
#include "shmbroker/types.h"

namespace shmbroker::daemon {

struct SegmentSpec {
  std::string name;
  std::string dtype;
  std::vector<std::uint64_t> shape;
  Order order = Order::kC;
  std::uint32_t mode = 0600;
  std::map<std::string, std::string> attrs;
  Lifetime lifetime = Lifetime::kPersistent;
  std::int64_t expires_unix_ns = 0;  // ttl: unlinked then; 0: never.
};

// One named segment: `nbytes` at `offset` of its region, which is its own (large segments) or
// shared with other segments of the same owner, group and mode (a block of it). The registry drops
// its reference at unlink; attachments and replies in flight hold theirs. A block goes back to its
// region (zeroed) when the last reference goes.
class SegmentEntry {
 public:
  // `created_unix_ns` 0 means now.
  SegmentEntry(std::uint64_t id, SegmentSpec spec, std::uint64_t nbytes, const Credentials& owner,
               std::uint64_t creator_connection, std::shared_ptr<Region> region,
               std::int64_t created_unix_ns = 0);

  std::uint64_t id() const { return id_; }
  const SegmentSpec& spec() const { return spec_; }
  const std::string& name() const { return spec_.name; }
  std::uint64_t nbytes() const { return nbytes_; }
  std::uint32_t uid() const { return uid_; }
  std::uint32_t gid() const { return gid_; }
  std::uint32_t creator_pid() const { return creator_pid_; }
  std::uint64_t creator_connection() const { return creator_connection_; }
  std::int64_t created_unix_ns() const { return created_unix_ns_; }
  // Live attachments over all connections, and per connection.
  std::uint32_t attachments() const { return attachments_; }
  struct Holding {
    std::uint64_t connection = 0;
    std::uint32_t attachments = 0;
    std::uint32_t writable = 0;  // Of them, read-write.
  };
  const std::vector<Holding>& holders() const { return holders_; }

  const std::shared_ptr<Region>& region() const { return region_; }
  std::uint64_t offset() const { return block_ ? block_->offset() : 0; }
  // In a shared region (else the region is its own).
  bool shared() const { return block_.has_value(); }
  // Whether its bytes are, or were until a seal moved them, at `offset` of shared region
  // `region_id`.
  bool IsAt(std::uint64_t region_id, std::uint64_t offset) const {
    auto at = [&](const std::optional<Block>& b) {
      return b && b->shared_region()->region()->id() == region_id && b->offset() == offset;
    };
    return at(block_) || at(old_block_);
  }
  // The inodes of the memfds a process may map to read it (its region, and the shared region it
  // was in before a seal moved it; 0 for none).
  std::array<std::uint64_t, 2> inodes() const {
    return {region_ ? region_->inode() : 0,
            old_block_ ? old_block_->shared_region()->region()->inode() : 0};
  }
  // The segment lost its name: its memory counts as unlinked until released, and a region of its
  // own closes its descriptors.
  void Retire();
  // The read-write memfd (the daemon's own reference to the memory).
  int memfd() const { return region_->memfd(); }
  bool sealed() const { return sealed_; }
  // References of arrays in flight (tickets not yet redeemed or lapsed).
  std::uint32_t in_flight() const { return in_flight_; }
  // For the refcount lifetime: attachments and arrays in flight.
  std::uint64_t references() const { return std::uint64_t{attachments_} + in_flight_; }

 private:
  friend class Registry;
  const std::uint64_t id_;
  const SegmentSpec spec_;
  const std::uint64_t nbytes_;
  const std::uint32_t uid_, gid_, creator_pid_;
  const std::uint64_t creator_connection_;
  const std::int64_t created_unix_ns_;
  std::uint32_t attachments_ = 0;
  // Few connections hold a given segment: a small vector beats a map in size and speed.
  std::vector<Holding> holders_;
  std::shared_ptr<Region> region_;
  // In a shared region: the segment's block, and the charge of its bytes (a region of its own
  // carries its charge itself).
  std::optional<Block> block_;
  std::optional<LedgerCharge> charge_;
  // Sealing moved a small segment to memory of its own: its old block stays reserved for the
  // attachments made before, which still map it.
  std::optional<Block> old_block_;
  bool sealed_ = false;
  std::uint32_t in_flight_ = 0;
  // A restored connection or refcount segment whose creator process still runs (see Registry).
  bool creator_alive_ = false;
};

}  // namespace shmbroker::daemon
