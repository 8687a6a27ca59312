// The segment registry: names to segments, memory accounting, permission checks.
//
// Not thread-safe: owned by the daemon's single event-loop thread.
#pragma once

#include <sys/types.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "arena.h"
#include "common/trust.h"
#include "credentials.h"
#include "ledger.h"
#include "memfd.h"
#include "pool.h"
#include "refusals.h"
#include "segment_entry.h"
#include "shmbroker/status.h"
#include "shmbroker/types.h"

namespace shmbroker::daemon {

// Which segments a purge removes: those matching every selector that is set.
struct PurgeSelector {
  std::vector<std::string> patterns;  // Any of these globs.
  bool orphans = false;               // No attachments and the creating connection closed.
  std::optional<std::uint64_t> older_than_seconds;
  std::optional<std::uint32_t> owner_uid;
  bool unattached = false;
  bool all = false;

  bool empty() const {
    return patterns.empty() && !orphans && !older_than_seconds && !owner_uid && !unattached && !all;
  }
};

struct PurgeReport {
  std::vector<std::shared_ptr<SegmentEntry>> removed;  // In name order.
  std::uint64_t bytes_freed = 0;
  std::uint64_t skipped_not_owner = 0;
  // Set when the scan budget ran out: the last name examined, to continue after.
  std::string next_after;
};

// How long one request may scan the registry on the event loop before it stops and lets the
// client continue where it stopped (a cursor), so that no scan holds up other clients.
class ScanBudget {
 public:
  static constexpr std::chrono::microseconds kPerRequest{2000};
  explicit ScanBudget(std::chrono::microseconds limit = kPerRequest)
      : deadline_(std::chrono::steady_clock::now() + limit) {}
  bool Exhausted() const { return std::chrono::steady_clock::now() >= deadline_; }

 private:
  std::chrono::steady_clock::time_point deadline_;
};

struct RegistryOptions {
  std::uint64_t max_memory = 0;  // 0: no cap beyond the machine's.
  // Per owner uid (root exempt); 0: no cap.
  std::uint64_t max_memory_per_user = 0;
  std::uint64_t max_segments_per_user = 0;
  // Segments of 1 byte up to this size are blocks of shared regions (see Arena); 0: none are.
  std::uint64_t shared_max_bytes = kDefaultSharedMaxBytes;
  static constexpr std::uint64_t kDefaultSharedMaxBytes = 1 << 20;
  ArenaOptions arena;
  // Seams for tests (fault injection without flags in production code).
  std::function<std::uint64_t()> available_memory = AvailableMemory;
  // --huge-pages: 2 MiB pages for segments of regions of their own from 2 MiB on.
  HugePages huge_pages = HugePages::kAuto;
  // Unset: CreateSegmentMemfd with huge_pages.
  std::function<Result<SegmentMemory>(const std::string&, std::uint64_t)> make_memfd;
  // The uid of a user name (for names under ~USER/), nullopt when there is no such user.
  std::function<std::optional<uid_t>(const std::string&)> user_uid = LookupUser;
  // --warm-pool: bytes of released large segments' memory kept for reuse (see WarmPool); 0: none.
  std::uint64_t warm_pool = 0;
  // The pool gives memory back while the machine has less than this available (see
  // AvailableMemory); 0: a sixteenth of MemoryLimit(), at least 64 MiB.
  std::uint64_t pool_min_available = 0;
  // Told of every segment added by Create and removed by Unlink or Purge (not of restored ones),
  // e.g. to keep systemd's fd store in step.
  std::function<void(const SegmentEntry&)> on_created;
  std::function<void(const SegmentEntry&)> on_removed;
};

class Registry {
 public:
  explicit Registry(RegistryOptions options = {});
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Validates `spec`, reserves its memory and registers it. ALREADY_EXISTS if the name is taken,
  // RESOURCE_EXHAUSTED over the cap or out of memory, INVALID_ARGUMENT for a bad spec,
  // PERMISSION_DENIED for a name under another user's ~USER/.
  Result<std::shared_ptr<SegmentEntry>> Create(SegmentSpec spec, const Credentials& creds,
                                               std::uint64_t connection);

  // Create in two steps, so that the slow part (make_memfd: reserving every page) can run off
  // the event loop: Reserve checks everything, takes the name and counts the memory; Commit
  // registers the segment with its memory (or, given an error, gives the name back); Cancel
  // gives everything back. Exactly one of Commit and Cancel per reservation.
  struct Reservation {
    SegmentSpec spec;
    Credentials creds;
    std::uint64_t connection = 0;
    std::uint64_t size = 0;
    std::string label;  // For make_memfd.
    // Memory from the warm pool, if one fitted: used by MakeMemory, given back by Cancel.
    std::shared_ptr<PoolEntry> pooled;
  };
  Result<Reservation> Reserve(SegmentSpec spec, const Credentials& creds, std::uint64_t connection);
  Result<std::shared_ptr<SegmentEntry>> Commit(Reservation r, Result<SegmentMemory> memory);
  void Cancel(const Reservation& r);
  // The slow part of a reserved create, safe to run off the event loop (it touches nothing the
  // loop owns): the pooled memory if the reservation got some, else (or should that fail) new
  // memory from make_memfd. A reservation with pooled memory must be made in a job queued after
  // the pool's zeroing (see WarmPool::set_offload): pooled_needs_offload() says so.
  std::function<Result<SegmentMemory>()> MemoryJob(const Reservation& r) const;
  bool pooled_needs_offload(const Reservation& r) const {
    return r.pooled != nullptr && pool_->offloaded() &&
           r.pooled->state.load(std::memory_order_acquire) != PoolEntry::kReady;
  }
  // Whether a segment of `size` bytes goes in a shared region: then Commit it with CommitShared,
  // which is quick (no memfd, no descriptor). Zero bytes too, whatever --shared-max says: a memfd
  // of its own would cost a descriptor and an fd store entry that no memory charge bounds.
  bool Shared(std::uint64_t size) const { return size == 0 || size <= options_.shared_max_bytes; }
  Result<std::shared_ptr<SegmentEntry>> CommitShared(Reservation r);
  const RegistryOptions& options() const { return options_; }

  // Re-registers a segment that survived a daemon restart (its memory and metadata came back
  // through systemd's fd store). Checks the spec and that `fd` is a memfd of the right size.
  Status Restore(std::uint64_t id, SegmentSpec spec, const Credentials& owner,
                 std::int64_t created_unix_ns, UniqueFd fd);
  // OK when restored ids `id` and `region_id` are in range (not 0, below 2^62).
  static Status CheckRestoredId(std::uint64_t id, std::uint64_t region_id);
  // The same as Restore for a segment in a shared region (adopted first with arena().Adopt);
  // `sealed` as recorded (only an empty block can be: others move to memory of their own).
  Status RestoreShared(std::uint64_t id, SegmentSpec spec, const Credentials& owner,
                       std::int64_t created_unix_ns, std::uint64_t region_id, std::uint64_t offset,
                       bool sealed = false);
  Arena& arena() { return arena_; }
  const Arena& arena() const { return arena_; }

  // The segment, if `creds` may access it so. NOT_FOUND / PERMISSION_DENIED.
  Result<std::shared_ptr<SegmentEntry>> Open(std::string_view name, Access access,
                                             const Credentials& creds);

  // The segment ticket `ticket` holds (lent, not yet redeemed), if `creds` may access it so;
  // unlinked or not. NOT_FOUND / PERMISSION_DENIED.
  Result<std::shared_ptr<SegmentEntry>> OpenLent(std::uint64_t ticket, Access access,
                                                 const Credentials& creds);

  // The segment for metadata only (anyone may look).
  Result<std::shared_ptr<SegmentEntry>> Find(std::string_view name);

  // Frees the name at once. Owner or root only.
  Status Unlink(std::string_view name, const Credentials& creds);

  // Segments whose names match the glob `pattern` (all if empty) and sort after `start_after`, in
  // name order, while `visit` returns true. With a `budget`, stops when it runs out and sets
  // `*next_after` to the last name examined (left empty when the scan finished or visit stopped).
  Status List(std::string_view pattern, std::string_view start_after,
              const std::function<bool(const SegmentEntry&)>& visit, ScanBudget* budget = nullptr,
              std::string* next_after = nullptr) const;

  // Unlinks (or with `dry_run` only reports) every segment matching `selector` that `creds` may
  // unlink; INVALID_ARGUMENT for an empty selector or a bad pattern.
  // Examines names after `start_after` only; with a `budget`, stops when it runs out (see
  // PurgeReport::next_after). Cheap selectors are checked before patterns; another user's segment
  // that matches is only counted in skipped_not_owner.
  Result<PurgeReport> Purge(const PurgeSelector& selector, const Credentials& creds, bool dry_run,
                            std::string_view start_after = {}, ScanBudget* budget = nullptr);

  // Counts an attachment of `s` by `connection` (and lets it go again: a refcount segment loses
  // its name with its last reference).
  void Attach(SegmentEntry& s, std::uint64_t connection, Access access);
  void Detach(SegmentEntry& s, std::uint64_t connection, Access access);

  // Tracks which connections are open so a segment can tell whether its creator is. Closing one
  // unlinks the connection-lifetime segments it created.
  void ConnectionOpened(std::uint64_t connection) { open_connections_.insert(connection); }
  void ConnectionClosed(std::uint64_t connection);

  // --- Lifetimes (see the README's "Lifetimes") ---
  // Makes `name` immutable (see wire::SealRequest): FAILED_PRECONDITION while connections other
  // than `connection` hold writable attachments, or while a writable mapping of its memory
  // remains; PERMISSION_DENIED without write access. A small segment moves to memory of its own.
  Result<std::shared_ptr<SegmentEntry>> Seal(std::string_view name, const Credentials& creds,
                                             std::uint64_t connection);
  // A reference of an array in flight (wire::TicketRequest), until Redeem or `lapse_unix_ns`.
  Status Lend(const std::shared_ptr<SegmentEntry>& s, std::uint64_t ticket, std::uint32_t uid,
              std::int64_t lapse_unix_ns);
  // The receiver (of user `uid`) attached `s` with `ticket`: the sender's reference goes. A
  // ticket not lent yet (the receiver's attach overtook it) is remembered until `lapse_unix_ns`
  // (at most kMaxTicketsPerUser a user), so that it does not hold `s` when it comes.
  void Redeem(std::uint64_t ticket, const std::shared_ptr<SegmentEntry>& s, std::uint32_t uid,
              std::int64_t lapse_unix_ns);
  // Unlinks the segments whose ttl ran out and lets lapsed tickets go, as of `now_unix_ns`.
  // Returns when to call it next (0: nothing is due ever).
  std::int64_t Expire(std::int64_t now_unix_ns);
  // Restored connection and refcount segments, whose creators may still run: the server watches
  // each (pid, created_unix_ns) and calls CreatorExited when it is gone.
  struct Creator {
    std::uint32_t pid = 0;
    std::int64_t created_unix_ns = 0;
    std::weak_ptr<SegmentEntry> segment;
  };
  std::vector<Creator> TakeRestoredCreators() { return std::exchange(restored_creators_, {}); }
  void CreatorExited(const std::shared_ptr<SegmentEntry>& s);
  // A refcount segment with no reference left loses its name.
  void CheckReferences(const SegmentEntry& s);
  // Why the daemon unlinked a segment by itself.
  enum class AutoCause { kConnection, kRefcount, kTtl };
  static constexpr std::string_view kAutoCauseNames[] = {"connection", "refcount", "ttl"};
  // Segments the daemon unlinked by itself, since start.
  std::uint64_t auto_unlinked(AutoCause cause) const {
    return auto_unlinked_[static_cast<int>(cause)];
  }
  // Tickets not yet redeemed, and those that lapsed unredeemed since start.
  std::uint64_t tickets_in_flight() const { return tickets_.size() - early_redeems_; }
  std::uint64_t tickets_lapsed() const { return tickets_lapsed_; }
  // Refusals at a limit, the registry's own and those the server and handler count here.
  Refusals& refusals() { return refusals_; }
  const Refusals& refusals() const { return refusals_; }
  bool IsConnectionOpen(std::uint64_t connection) const {
    return open_connections_.count(connection) != 0;
  }

  static bool Allowed(const SegmentEntry& s, Access access, const Credentials& creds);
  // Allowed, as an error saying why not (and FAILED_PRECONDITION for writing a sealed one).
  static Status CheckAccess(const SegmentEntry& s, Access access, const Credentials& creds);

  // What a user's segments take, unlinked ones still in use included (root's too, though no cap
  // applies to root).
  using Usage = Ledger::Usage;
  Usage UsageOf(std::uint32_t uid) const { return ledger_->Of(uid); }

  // Named segments.
  std::size_t size() const { return segments_.size(); }
  // Every byte still charged: named segments and unlinked ones still in use.
  std::uint64_t bytes_held() const { return ledger_->total().bytes; }
  // Unlinked segments whose memory is still in use (attached, mapped or in a reply in flight).
  Usage unlinked_in_use() const { return ledger_->unlinked(); }
  // Visits those whose names match `pattern` (all if empty) and whose ids are above
  // `start_after_id`, in id order, while `visit` returns true. With a `budget`, stops when it
  // runs out and sets `*next_after_id` to the last id examined (left 0 when the scan finished or
  // visit stopped).
  Status ForEachUnlinked(std::string_view pattern, std::uint64_t start_after_id,
                         const std::function<bool(const SegmentEntry&)>& visit,
                         ScanBudget* budget = nullptr,
                         std::uint64_t* next_after_id = nullptr) const;
  std::uint64_t max_memory() const { return options_.max_memory; }

  // --- The warm pool ---
  WarmPool& pool() { return *pool_; }
  const WarmPool& pool() const { return *pool_; }
  // Memory pressure: while the machine has less than pool_min_available bytes available, pool
  // memory goes back to the kernel, oldest first. Returns the bytes released.
  std::uint64_t RelievePressure();
  // trim: all of the pool for root (or `everything`), else the memory kept for `uid`'s segments.
  WarmPool::Released Trim(std::uint32_t uid, bool everything);

 private:
  // Makes a new region of its own recycle its memfd into the pool when it is destroyed.
  void Recyclable(Region& region, const ArenaKey& key);
  // Evicts pool memory until `bytes` more fit under --max-memory; the bytes released.
  std::uint64_t MakeRoom(std::uint64_t bytes);
  // Checks a restored segment's spec and time; returns its size in bytes.
  Result<std::uint64_t> CheckRestored(const SegmentSpec& spec, std::int64_t created_unix_ns) const;
  // Validates a spec for a new segment (and that its name is free); returns its size in bytes.
  Result<std::uint64_t> CheckNew(const SegmentSpec& spec) const;
  // RESOURCE_EXHAUSTED when `size` more bytes in one more segment would take `uid` over a quota.
  // Names under ~USER/ are USER's: PERMISSION_DENIED for anyone else but root.
  Status CheckNamespace(const std::string& name, const Credentials& creds) const;
  // Before refusing for memory, gives the free pages of `uid`'s shared regions back (Arena::Trim).
  Status CheckQuota(std::uint32_t uid, const std::string& name, std::uint64_t size);
  // `s` lost its name (unlink, purge): retire its region and remember it while it is in use.
  void Unnamed(const std::shared_ptr<SegmentEntry>& s);
  // The daemon unlinks `s` by itself, if it still has its name.
  void AutoUnlink(const SegmentEntry& s, AutoCause cause);
  // A new or restored segment: its ttl and lifetime bookkeeping.
  void Track(const std::shared_ptr<SegmentEntry>& s);
  void SweepUnlinked() const;

  RegistryOptions options_;
  std::map<std::string, std::shared_ptr<SegmentEntry>, std::less<>> segments_;
  std::set<std::string, std::less<>> reserved_;  // Names being created (Reserve..Commit).
  std::set<std::uint64_t> open_connections_;
  std::shared_ptr<Ledger> ledger_ = std::make_shared<Ledger>();
  Arena arena_;
  // Unlinked segments that were still held when unlinked, by id; expired ones are swept lazily.
  mutable std::map<std::uint64_t, std::weak_ptr<SegmentEntry>> unlinked_;
  mutable std::size_t unlinked_live_hint_ = 0;
  std::uint64_t unchecked_bytes_ = 0;  // Created since the machine's memory was last checked.
  // ttl: (expiry, id) in order.
  std::map<std::pair<std::int64_t, std::uint64_t>, std::weak_ptr<SegmentEntry>> expiries_;
  // Connection-lifetime segments by (creating connection, id).
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::weak_ptr<SegmentEntry>> by_connection_;
  struct Ticket {
    std::shared_ptr<SegmentEntry> segment;  // Null: redeemed before it was lent.
    std::uint32_t uid = 0;                  // The lender's; the redeemer's when redeemed early.
    std::int64_t lapse_unix_ns = 0;
    std::weak_ptr<SegmentEntry> redeemed;  // Redeemed early: what the receiver attached.
  };
  std::unordered_map<std::uint64_t, Ticket> tickets_;
  void DropTicket(std::unordered_map<std::uint64_t, Ticket>::iterator it);
  // Tickets in the order they lapse (all lapse after the same timeout): (lapse, ticket).
  std::deque<std::pair<std::int64_t, std::uint64_t>> ticket_lapses_;
  std::unordered_map<std::uint32_t, std::size_t> tickets_per_uid_;
  std::size_t early_redeems_ = 0;  // Tickets with a null segment,
  std::unordered_map<std::uint32_t, std::size_t> early_redeems_per_uid_;  // bounded per user.
  std::vector<Creator> restored_creators_;
  std::array<std::uint64_t, 3> auto_unlinked_{};
  std::uint64_t tickets_lapsed_ = 0;
  Refusals refusals_;
  std::uint64_t next_id_ = 1;
  std::shared_ptr<WarmPool> pool_;
};

}  // namespace shmbroker::daemon
