#include "registry.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include <spdlog/spdlog.h>

#include "common/glob.h"
#include "common/posix.h"
#include "common/units.h"
#include "validate.h"

namespace shmbroker::daemon {
namespace {

std::string Quoted(std::string_view name) { return "'" + std::string(name) + "'"; }

// Creates read /proc only once this many bytes were created since the last look (or for one
// create this large): the machine always has a few MiB, and reading /proc per small create would
// cost more than the create.
constexpr std::uint64_t kCheckAvailableEvery = std::uint64_t{64} << 20;

}  // namespace

Registry::Registry(RegistryOptions options)
    : options_(std::move(options)),
      arena_(options_.arena),
      pool_(std::make_shared<WarmPool>(options_.warm_pool)) {
  options_.shared_max_bytes = std::min(options_.shared_max_bytes, options_.arena.region_bytes);
  if (options_.pool_min_available == 0) {
    options_.pool_min_available = std::max<std::uint64_t>(MemoryLimit() / 16, 64 << 20);
  }
  if (!options_.make_memfd) {
    options_.make_memfd = [huge = options_.huge_pages](const std::string& label,
                                                       std::uint64_t size) {
      return CreateSegmentMemfd(label, size, huge);
    };
  }
}

Registry::~Registry() { pool_->Close(); }

bool Registry::Allowed(const SegmentEntry& s, Access access, const Credentials& creds) {
  if (creds.uid == 0) return true;
  std::uint32_t bit = access == Access::kReadWrite ? 2 : 4;
  std::uint32_t mode = s.spec().mode;
  if (creds.uid == s.uid()) return mode & (bit << 6);
  bool in_group = creds.gid == s.gid() || std::find(creds.groups.begin(), creds.groups.end(),
                                                    s.gid()) != creds.groups.end();
  if (in_group) return mode & (bit << 3);
  return mode & bit;
}

Result<std::uint64_t> Registry::CheckNew(const SegmentSpec& spec) const {
  if (Status s = ValidateName(spec.name); !s.ok()) return s;
  auto itemsize = ParseDtype(spec.dtype);
  if (!itemsize.ok()) return itemsize.status();
  auto nbytes = ComputeNbytes(*itemsize, spec.shape);
  if (!nbytes.ok()) return nbytes.status();
  if (Status s = ValidateMode(spec.mode); !s.ok()) return s;
  if (Status s = ValidateAttrs(spec.attrs); !s.ok()) return s;
  if (segments_.find(spec.name) != segments_.end()) {
    return Status::AlreadyExists("a segment named " + Quoted(spec.name) + " exists already");
  }
  if (reserved_.count(spec.name) != 0) {
    return Status::AlreadyExists("a segment named " + Quoted(spec.name) + " is being created");
  }
  return nbytes;
}

Status Registry::CheckQuota(std::uint32_t uid, const std::string& name, std::uint64_t size) {
  if (uid == 0) return Status::Ok();
  Usage u = UsageOf(uid);
  if (options_.max_segments_per_user != 0 && u.segments + 1 > options_.max_segments_per_user) {
    refusals_.Count(Limit::kSegmentsPerUser);
    return Status::ResourceExhausted("creating " + Quoted(name) + ": uid " + std::to_string(uid) +
                                     " holds " + std::to_string(u.segments) +
                                     " segments, its --max-segments-per-user " +
                                     std::to_string(options_.max_segments_per_user));
  }
  if (options_.max_memory_per_user == 0) return Status::Ok();
  // The free memory kept in its shared regions is held for it too: charged, or one user could
  // fragment them past any cap. Its regions' free pages go back first.
  auto over = [&] {
    std::uint64_t cap = options_.max_memory_per_user;
    return size > cap || u.bytes + arena_.overhead(uid) > cap - size;
  };
  if (over()) arena_.Trim(uid);
  if (over()) {
    std::uint64_t kept = arena_.overhead(uid);
    std::uint64_t held = u.bytes + kept;
    refusals_.Count(Limit::kMemoryPerUser);
    return Status::ResourceExhausted(
        "creating " + Quoted(name) + " needs " + HumanBytes(size) + "; uid " + std::to_string(uid) +
        " holds " + HumanBytes(held) +
        (kept != 0 ? " (" + HumanBytes(kept) + " of it free in its shared regions)" : "") +
        " of its --max-memory-per-user " + HumanBytes(options_.max_memory_per_user));
  }
  return Status::Ok();
}

void Registry::Unnamed(const std::shared_ptr<SegmentEntry>& s) {
  if (options_.on_removed) options_.on_removed(*s);
  if (s->spec().expires_unix_ns != 0) expiries_.erase({s->spec().expires_unix_ns, s->id()});
  if (s->spec().lifetime == Lifetime::kConnection) {
    by_connection_.erase({s->creator_connection(), s->id()});
  }
  // Its memory stays charged until the last holder lets go; its descriptors close now.
  s->Retire();
  if (s.use_count() > 1) {  // Someone else holds it: it is unlinked but in use.
    if (unlinked_.size() >= 2 * unlinked_live_hint_ + 64) SweepUnlinked();
    unlinked_.emplace(s->id(), s);
  }
}

void Registry::SweepUnlinked() const {
  std::erase_if(unlinked_, [](const auto& kv) { return kv.second.expired(); });
  unlinked_live_hint_ = unlinked_.size();
}

Status Registry::ForEachUnlinked(std::string_view pattern, std::uint64_t start_after_id,
                                 const std::function<bool(const SegmentEntry&)>& visit,
                                 ScanBudget* budget, std::uint64_t* next_after_id) const {
  if (Status s = ValidatePattern(pattern); !s.ok()) return s;
  SweepUnlinked();
  for (auto it = unlinked_.upper_bound(start_after_id); it != unlinked_.end(); ++it) {
    auto s = it->second.lock();
    if (s && (pattern.empty() || GlobMatch(pattern, s->name())) && !visit(*s)) break;
    if (budget != nullptr && budget->Exhausted() && std::next(it) != unlinked_.end()) {
      if (next_after_id != nullptr) *next_after_id = it->first;
      break;
    }
  }
  return Status::Ok();
}

Status Registry::CheckNamespace(const std::string& name, const Credentials& creds) const {
  if (name.empty() || name[0] != '~') return Status::Ok();
  std::size_t slash = name.find('/');
  if (slash == std::string::npos || slash == 1) {
    return Status::InvalidArgument(
        "a name starting with '~' is ~USER/..., the namespace of user "
        "USER: " +
        Quoted(name));
  }
  std::string user = name.substr(1, slash - 1);
  std::optional<std::uint32_t> uid = options_.user_uid(user);
  if (!uid) {
    return Status::InvalidArgument("names under ~" + user + "/ belong to user '" + user +
                                   "', and there is no such user");
  }
  if (creds.uid != 0 && creds.uid != *uid) {
    return Status::PermissionDenied("names under ~" + user + "/ can be created only by user '" +
                                    user + "' (uid " + std::to_string(*uid) +
                                    ") or root; caller is uid " + std::to_string(creds.uid));
  }
  return Status::Ok();
}

Result<Registry::Reservation> Registry::Reserve(SegmentSpec spec, const Credentials& creds,
                                                std::uint64_t connection) {
  auto nbytes = CheckNew(spec);
  if (!nbytes.ok()) return nbytes.status();
  if (Status s = CheckNamespace(spec.name, creds); !s.ok()) return s;
  std::uint64_t size = *nbytes;
  if (Status s = CheckQuota(creds.uid, spec.name, size); !s.ok()) return s;
  // Pooled memory of the same class and size (or never handed out), taken out of the pool now:
  // its bytes move from the pool to the new segment.
  std::shared_ptr<PoolEntry> pooled;
  if (!Shared(size) && size > 0) pooled = pool_->Take({creds.uid, creds.gid, spec.mode}, size);
  if (options_.max_memory != 0) {
    MakeRoom(size);  // The pool counts against --max-memory too, and goes first.
    std::uint64_t held = bytes_held() + arena_.overhead();
    if (size > options_.max_memory - std::min(held, options_.max_memory)) {
      pool_->Return(std::move(pooled));
      refusals_.Count(Limit::kMaxMemory);
      return Status::ResourceExhausted("creating " + Quoted(spec.name) + " needs " +
                                       std::to_string(size) + " bytes; the daemon holds " +
                                       std::to_string(held) + " of its --max-memory " +
                                       std::to_string(options_.max_memory));
    }
  }
  // Pooled memory needs none of the machine's.
  if (!pooled && (size > kCheckAvailableEvery || unchecked_bytes_ + size > kCheckAvailableEvery)) {
    unchecked_bytes_ = 0;
    // Keep one window free: the creates until the next look cannot then exhaust the machine.
    std::uint64_t avail = options_.available_memory();
    std::uint64_t want = size + kCheckAvailableEvery;
    if (avail < want && pool_->bytes() > 0) {
      // The pool's memory goes back first (freed as its descriptors close).
      avail += pool_->Evict(want - avail).bytes;
    }
    if (size > avail || avail - size < kCheckAvailableEvery) {
      refusals_.Count(Limit::kMachineMemory);
      return Status::ResourceExhausted("creating " + Quoted(spec.name) + " needs " +
                                       std::to_string(size) + " bytes; the machine has " +
                                       std::to_string(avail) + " available (" +
                                       std::to_string(kCheckAvailableEvery) + " are kept free)");
    }
  }
  if (!pooled) unchecked_bytes_ += size;
  // Until committed or cancelled, the name is taken and the memory counted.
  reserved_.insert(spec.name);
  ledger_->Charge(creds.uid, size);
  Reservation r;
  r.spec = std::move(spec);
  r.creds = creds;
  r.connection = connection;
  r.size = size;
  r.label = "shmbroker:" + r.spec.name;
  r.pooled = std::move(pooled);
  return r;
}

std::uint64_t Registry::MakeRoom(std::uint64_t bytes) {
  auto total = [&] { return bytes_held() + arena_.overhead() + pool_->bytes() + bytes; };
  if (options_.max_memory == 0 || total() <= options_.max_memory) return 0;
  std::uint64_t released = arena_.Trim(std::nullopt);  // Free pages of the shared regions first.
  if (total() <= options_.max_memory || pool_->bytes() == 0) return released;
  return released + pool_->Evict(total() - options_.max_memory).bytes;
}

std::uint64_t Registry::RelievePressure() {
  if (pool_->bytes() == 0) return 0;
  std::uint64_t avail = options_.available_memory();
  if (avail >= options_.pool_min_available) return 0;
  spdlog::info("warm pool: the machine has {} available, less than {}: giving memory back",
               HumanBytes(avail), HumanBytes(options_.pool_min_available));
  return pool_->Evict(options_.pool_min_available - avail).bytes;
}

WarmPool::Released Registry::Trim(std::uint32_t uid, bool everything) {
  constexpr std::uint64_t kAll = ~std::uint64_t{0};
  return everything ? pool_->Evict(kAll) : pool_->Evict(kAll, uid);
}

std::function<Result<SegmentMemory>()> Registry::MemoryJob(const Reservation& r) const {
  return [make = options_.make_memfd, label = r.label, size = r.size,
          pooled = r.pooled]() -> Result<SegmentMemory> {
    if (pooled) {
      auto memory = AdoptPooled(*pooled, size);
      if (memory.ok()) return memory;
      pooled->fd.reset();  // Unfit (sealed by a former holder, not zeroed): never reused.
    }
    return make(label, size);
  };
}

void Registry::Recyclable(Region& region, const ArenaKey& key) {
  if (!pool_->Keeps(region.size())) return;
  region.set_recycler([pool = std::weak_ptr<WarmPool>(pool_), key](UniqueFd fd, std::uint64_t size,
                                                                   std::uint64_t huge_bytes) {
    auto p = pool.lock();
    if (p && p->Keeps(size)) p->Put(key, std::move(fd), size, huge_bytes);
  });
}

void Registry::Cancel(const Reservation& r) {
  reserved_.erase(r.spec.name);
  ledger_->Release(r.creds.uid, r.size, false);
  // Pooled memory not used (its fd still there) goes back; used or unfit memory has none.
  if (r.pooled && r.pooled->fd) pool_->Return(r.pooled);
}

Result<std::shared_ptr<SegmentEntry>> Registry::Commit(Reservation r,
                                                       Result<SegmentMemory> memory) {
  Cancel(r);  // The region takes over the charge.
  if (!memory.ok()) {
    Status s = memory.status();
    return Status(s.code(), "creating " + Quoted(r.spec.name) + " (" + std::to_string(r.size) +
                                " bytes): " + s.message());
  }
  std::string name = r.spec.name;
  std::uint64_t id = next_id_++;
  auto region = std::make_shared<Region>(id, std::move(memory->fd), r.size, ledger_, r.creds.uid);
  region->set_huge_bytes(memory->huge_bytes);
  Recyclable(*region, {r.creds.uid, r.creds.gid, r.spec.mode});
  if (r.pooled && r.pooled->adopted) pool_->CountReuse();
  auto seg = std::make_shared<SegmentEntry>(id, std::move(r.spec), r.size, r.creds, r.connection,
                                            std::move(region));
  segments_.emplace(std::move(name), seg);
  Track(seg);
  if (options_.on_created) options_.on_created(*seg);
  return seg;
}

Result<std::shared_ptr<SegmentEntry>> Registry::CommitShared(Reservation r) {
  Cancel(r);  // The segment takes over the charge.
  auto block = arena_.Allocate({r.creds.uid, r.creds.gid, r.spec.mode}, r.size,
                               [this] { return next_id_++; });
  if (!block.ok()) {
    Status s = block.status();
    return Status(s.code(), "creating " + Quoted(r.spec.name) + " (" + std::to_string(r.size) +
                                " bytes): " + s.message());
  }
  std::string name = r.spec.name;
  auto region = block->shared_region()->region();
  auto seg = std::make_shared<SegmentEntry>(next_id_++, std::move(r.spec), r.size, r.creds,
                                            r.connection, std::move(region));
  seg->block_.emplace(std::move(block).value());
  seg->charge_.emplace(ledger_, r.creds.uid, r.size);
  segments_.emplace(std::move(name), seg);
  Track(seg);
  if (options_.on_created) options_.on_created(*seg);
  return seg;
}

Result<std::shared_ptr<SegmentEntry>> Registry::Create(SegmentSpec spec, const Credentials& creds,
                                                       std::uint64_t connection) {
  auto r = Reserve(std::move(spec), creds, connection);
  if (!r.ok()) return r.status();
  if (Shared(r->size)) return CommitShared(std::move(r).value());
  if (pooled_needs_offload(*r)) pool_->Return(std::exchange(r->pooled, nullptr));  // Not zero yet.
  auto memory = MemoryJob(*r)();
  return Commit(std::move(r).value(), std::move(memory));
}

Result<std::uint64_t> Registry::CheckRestored(const SegmentSpec& spec,
                                              std::int64_t created_unix_ns) const {
  // Between the epoch and a day ahead (clocks do step): anything else is corrupt metadata, and
  // every age computed from it would be nonsense or overflow.
  constexpr std::int64_t kDayNs = 86'400'000'000'000;
  if (created_unix_ns < 0 || created_unix_ns > NowUnixNs() + kDayNs) {
    return Status::InvalidArgument("creation time " + std::to_string(created_unix_ns) +
                                   " ns is out of range");
  }
  if (static_cast<int>(spec.lifetime) < 0 || spec.lifetime > Lifetime::kRefcount ||
      spec.expires_unix_ns < 0) {
    return Status::InvalidArgument("lifetime or expiry out of range");
  }
  return CheckNew(spec);
}

Status Registry::CheckRestoredId(std::uint64_t id, std::uint64_t region_id) {
  // The counter must not come near wrapping (ids are also fd-store names), and a region's wire id
  // is twice its id.
  constexpr std::uint64_t kMaxId = std::uint64_t{1} << 62;
  if (id == 0 || region_id == 0 || id >= kMaxId || region_id >= kMaxId) {
    return Status::InvalidArgument("stored id " + std::to_string(id) + " (region " +
                                   std::to_string(region_id) + ") is out of range");
  }
  return Status::Ok();
}

Status Registry::RestoreShared(std::uint64_t id, SegmentSpec spec, const Credentials& owner,
                               std::int64_t created_unix_ns, std::uint64_t region_id,
                               std::uint64_t offset, bool sealed) {
  if (Status s = CheckRestoredId(id, region_id); !s.ok()) return s;
  auto nbytes = CheckRestored(spec, created_unix_ns);
  if (!nbytes.ok()) return nbytes.status();
  auto block = arena_.Claim(region_id, {owner.uid, owner.gid, spec.mode}, offset, *nbytes);
  if (!block.ok()) return block.status();
  std::string name = spec.name;
  auto region = block->shared_region()->region();
  auto seg = std::make_shared<SegmentEntry>(id, std::move(spec), *nbytes, owner, /*connection=*/0,
                                            std::move(region), created_unix_ns);
  seg->block_.emplace(std::move(block).value());
  seg->charge_.emplace(ledger_, owner.uid, *nbytes);
  seg->sealed_ = sealed && *nbytes == 0;  // Only an empty block is sealed in place.
  segments_.emplace(std::move(name), seg);
  Track(seg);
  next_id_ = std::max({next_id_, id + 1, region_id + 1});
  return Status::Ok();
}

Status Registry::Restore(std::uint64_t id, SegmentSpec spec, const Credentials& owner,
                         std::int64_t created_unix_ns, UniqueFd fd) {
  if (Status s = CheckRestoredId(id, id); !s.ok()) return s;
  auto nbytes = CheckRestored(spec, created_unix_ns);
  if (!nbytes.ok()) return nbytes.status();
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<std::uint64_t>(st.st_size) != *nbytes) {
    return Status::FailedPrecondition("the memory of " + Quoted(spec.name) + " is not " +
                                      std::to_string(*nbytes) + " bytes");
  }
  int seals = ::fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0 || (seals & (F_SEAL_GROW | F_SEAL_SHRINK)) != (F_SEAL_GROW | F_SEAL_SHRINK)) {
    return Status::FailedPrecondition("the memory of " + Quoted(spec.name) + " is not sealed");
  }
  std::string name = spec.name;
  auto region = std::make_shared<Region>(id, std::move(fd), *nbytes, ledger_, owner.uid);
  auto seg = std::make_shared<SegmentEntry>(id, std::move(spec), *nbytes, owner, /*connection=*/0,
                                            std::move(region), created_unix_ns);
  seg->sealed_ = (seals & F_SEAL_WRITE) != 0;
  segments_.emplace(std::move(name), seg);
  Track(seg);
  next_id_ = std::max(next_id_, id + 1);
  return Status::Ok();
}

Result<std::shared_ptr<SegmentEntry>> Registry::Find(std::string_view name) {
  auto it = segments_.find(name);
  if (it == segments_.end()) {
    if (Status s = ValidateName(name); !s.ok()) return s;
    return Status::NotFound("no segment named " + Quoted(name));
  }
  return it->second;
}

Status Registry::CheckAccess(const SegmentEntry& s, Access access, const Credentials& creds) {
  if (!Allowed(s, access, creds)) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "0%03o", s.spec().mode);
    return Status::PermissionDenied(
        std::string(access == Access::kReadWrite ? "read-write" : "read-only") + " access to " +
        Quoted(s.name()) + " denied for uid " + std::to_string(creds.uid) + " (owner uid " +
        std::to_string(s.uid()) + ", mode " + mode + ")");
  }
  if (access == Access::kReadWrite && s.sealed()) {
    return Status::FailedPrecondition(Quoted(s.name()) + " is sealed: attach it read-only");
  }
  return Status::Ok();
}

Result<std::shared_ptr<SegmentEntry>> Registry::Open(std::string_view name, Access access,
                                                     const Credentials& creds) {
  auto seg = Find(name);
  if (!seg.ok()) return seg;
  if (Status s = CheckAccess(**seg, access, creds); !s.ok()) return s;
  return seg;
}

Result<std::shared_ptr<SegmentEntry>> Registry::OpenLent(std::uint64_t ticket, Access access,
                                                         const Credentials& creds) {
  auto it = tickets_.find(ticket);
  if (it == tickets_.end() || it->second.segment == nullptr) {
    return Status::NotFound("ticket " + std::to_string(ticket) + " is not lent");
  }
  if (Status s = CheckAccess(*it->second.segment, access, creds); !s.ok()) return s;
  return it->second.segment;
}

Status Registry::Unlink(std::string_view name, const Credentials& creds) {
  auto it = segments_.find(name);
  if (it == segments_.end()) {
    if (Status s = ValidateName(name); !s.ok()) return s;
    return Status::NotFound("no segment named " + Quoted(name));
  }
  const SegmentEntry& s = *it->second;
  if (creds.uid != 0 && creds.uid != s.uid()) {
    return Status::PermissionDenied("only the owner (uid " + std::to_string(s.uid()) +
                                    ") or root may unlink " + Quoted(name) + "; caller is uid " +
                                    std::to_string(creds.uid));
  }
  Unnamed(it->second);
  segments_.erase(it);
  return Status::Ok();
}

void Registry::Attach(SegmentEntry& s, std::uint64_t connection, Access access) {
  auto it = std::find_if(s.holders_.begin(), s.holders_.end(), [&](const SegmentEntry::Holding& h) {
    return h.connection == connection;
  });
  if (it == s.holders_.end()) it = s.holders_.insert(s.holders_.end(), {connection, 0, 0});
  ++it->attachments;
  if (access == Access::kReadWrite) ++it->writable;
  ++s.attachments_;
}

void Registry::Detach(SegmentEntry& s, std::uint64_t connection, Access access) {
  auto it = std::find_if(s.holders_.begin(), s.holders_.end(), [&](const SegmentEntry::Holding& h) {
    return h.connection == connection;
  });
  if (it == s.holders_.end() || it->attachments == 0) return;
  --it->attachments;
  if (access == Access::kReadWrite && it->writable > 0) --it->writable;
  --s.attachments_;
  if (it->attachments == 0) s.holders_.erase(it);
  CheckReferences(s);
}

Status Registry::List(std::string_view pattern, std::string_view start_after,
                      const std::function<bool(const SegmentEntry&)>& visit, ScanBudget* budget,
                      std::string* next_after) const {
  if (Status s = ValidatePattern(pattern); !s.ok()) return s;
  auto it = start_after.empty() ? segments_.begin() : segments_.upper_bound(start_after);
  for (; it != segments_.end(); ++it) {
    if (pattern.empty() || GlobMatch(pattern, it->first)) {
      if (!visit(*it->second)) break;
    }
    if (budget != nullptr && budget->Exhausted() && std::next(it) != segments_.end()) {
      if (next_after != nullptr) *next_after = it->first;
      break;
    }
  }
  return Status::Ok();
}

Result<PurgeReport> Registry::Purge(const PurgeSelector& sel, const Credentials& creds,
                                    bool dry_run, std::string_view start_after,
                                    ScanBudget* budget) {
  if (sel.empty()) {
    return Status::InvalidArgument(
        "purge needs at least one selector (patterns, orphans, older than, owner, unattached or "
        "all)");
  }
  if (sel.patterns.size() > kMaxPurgePatterns) {
    return Status::InvalidArgument("a purge takes at most " + std::to_string(kMaxPurgePatterns) +
                                   " patterns, not " + std::to_string(sel.patterns.size()));
  }
  for (const auto& p : sel.patterns) {
    if (p.empty() || p.size() > kMaxPatternBytes) {
      return Status::InvalidArgument("purge patterns must be 1 to " +
                                     std::to_string(kMaxPatternBytes) + " bytes");
    }
  }
  std::int64_t now = NowUnixNs();
  // The cheap selectors first; the patterns, the costly part, last.
  auto matches = [&](const SegmentEntry& s) {
    if (sel.orphans && (s.attachments() != 0 || IsConnectionOpen(s.creator_connection()))) {
      return false;
    }
    if (sel.unattached && s.attachments() != 0) return false;
    if (sel.owner_uid && s.uid() != *sel.owner_uid) return false;
    if (sel.older_than_seconds) {
      // Saturate: a huge duration selects nothing rather than overflowing.
      std::uint64_t limit_s = std::min<std::uint64_t>(*sel.older_than_seconds, 1ull << 32);
      // Compared without subtracting the creation time, which could overflow.
      if (s.created_unix_ns() > now - static_cast<std::int64_t>(limit_s) * 1'000'000'000) {
        return false;
      }
    }
    return sel.patterns.empty() ||
           std::any_of(sel.patterns.begin(), sel.patterns.end(),
                       [&](const std::string& p) { return GlobMatch(p, s.name()); });
  };
  PurgeReport result;
  auto it = start_after.empty() ? segments_.begin() : segments_.upper_bound(start_after);
  while (it != segments_.end()) {
    // At least this one is examined: every call makes progress, however small its budget.
    if (budget != nullptr && budget->Exhausted() && std::next(it) != segments_.end()) {
      result.next_after = it->first;
    }
    const SegmentEntry& s = *it->second;
    bool mine = creds.uid == 0 || creds.uid == s.uid();
    if (!matches(s)) {
      ++it;
    } else if (!mine) {
      ++result.skipped_not_owner;
      ++it;
    } else {
      result.bytes_freed += s.nbytes();
      result.removed.push_back(it->second);
      if (dry_run) {
        ++it;
      } else {
        Unnamed(it->second);
        it = segments_.erase(it);
      }
    }
    if (!result.next_after.empty()) break;
  }
  return result;
}

// --- Lifetimes ---

void Registry::Track(const std::shared_ptr<SegmentEntry>& s) {
  const SegmentSpec& spec = s->spec();
  if (spec.expires_unix_ns != 0) expiries_.emplace(std::pair{spec.expires_unix_ns, s->id()}, s);
  if (spec.lifetime == Lifetime::kPersistent) return;
  if (s->creator_connection() != 0) {
    if (spec.lifetime == Lifetime::kConnection) {
      by_connection_.emplace(std::pair{s->creator_connection(), s->id()}, s);
    }
    return;
  }
  // Restored: its creator's connection died with the old daemon, not necessarily its creator.
  s->creator_alive_ = true;
  restored_creators_.push_back({s->creator_pid(), s->created_unix_ns(), s});
}

void Registry::AutoUnlink(const SegmentEntry& s, AutoCause cause) {
  auto it = segments_.find(s.name());
  if (it == segments_.end() || it->second.get() != &s) return;  // Unlinked already.
  ++auto_unlinked_[static_cast<int>(cause)];
  std::shared_ptr<SegmentEntry> keep = it->second;
  segments_.erase(it);
  Unnamed(keep);
}

void Registry::CheckReferences(const SegmentEntry& s) {
  if (s.spec().lifetime == Lifetime::kRefcount && s.references() == 0 && !s.creator_alive_) {
    AutoUnlink(s, AutoCause::kRefcount);
  }
}

void Registry::ConnectionClosed(std::uint64_t connection) {
  open_connections_.erase(connection);
  auto first = by_connection_.lower_bound({connection, 0});
  auto last = by_connection_.lower_bound({connection + 1, 0});
  std::vector<std::shared_ptr<SegmentEntry>> owned;
  for (auto it = first; it != last; ++it) {
    if (auto s = it->second.lock()) owned.push_back(std::move(s));
  }
  by_connection_.erase(first, last);
  for (const auto& s : owned) AutoUnlink(*s, AutoCause::kConnection);
}

void Registry::CreatorExited(const std::shared_ptr<SegmentEntry>& s) {
  if (!s->creator_alive_) return;
  s->creator_alive_ = false;
  if (s->spec().lifetime == Lifetime::kConnection) {
    AutoUnlink(*s, AutoCause::kConnection);
  } else {
    CheckReferences(*s);
  }
}

Result<std::shared_ptr<SegmentEntry>> Registry::Seal(std::string_view name,
                                                     const Credentials& creds,
                                                     std::uint64_t connection) {
  auto found = Find(name);
  if (!found.ok()) return found;
  std::shared_ptr<SegmentEntry> s = std::move(found).value();
  if (!Allowed(*s, Access::kReadWrite, creds)) {
    return Status::PermissionDenied("sealing " + Quoted(name) + " needs write access, which uid " +
                                    std::to_string(creds.uid) + " does not have");
  }
  if (s->sealed()) return s;
  std::size_t writers = 0;
  for (const auto& h : s->holders()) writers += h.writable > 0 && h.connection != connection;
  if (writers > 0) {
    return Status::FailedPrecondition(
        Quoted(name) + " has writable attachments in " + std::to_string(writers) + " other " +
        (writers == 1 ? "connection" : "connections") + "; they must release them first");
  }
  if (s->shared() && s->nbytes() == 0) {
    // No bytes to protect: it stays a block (memory of its own would cost a descriptor).
    s->sealed_ = true;
    if (options_.on_removed) options_.on_removed(*s);
    if (options_.on_created) options_.on_created(*s);  // The store records it sealed.
  } else if (s->shared()) {
    // A block's pages are shared with other segments and mapped writable by the daemon: the
    // bytes move to memory of their own, sealed before anyone maps it.
    auto memory = options_.make_memfd("shmbroker:" + s->name(), s->nbytes());
    if (!memory.ok()) return memory.status();
    int fd = memory->fd.get();
    const std::byte* src = s->block_->shared_region()->data() + s->block_->offset();
    for (std::uint64_t done = 0; done < s->nbytes();) {
      ssize_t n = ::pwrite(fd, src + done, s->nbytes() - done, static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return PosixError("copying a segment to seal it", n < 0 ? errno : EIO);
      done += static_cast<std::uint64_t>(n);
    }
    if (::fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
      return PosixError("F_ADD_SEALS", errno);
    }
    auto region =
        std::make_shared<Region>(next_id_++, std::move(memory->fd), s->nbytes(), ledger_, s->uid());
    region->set_huge_bytes(memory->huge_bytes);
    s->region_ = std::move(region);
    s->old_block_ = std::move(s->block_);
    s->block_.reset();
    s->charge_.reset();  // The region charges the bytes now.
    // The store's record moves to the new memory (once the store has it: until then the
    // block's record holds, so a crash meanwhile loses only the seal).
    if (options_.on_created) options_.on_created(*s);
  } else if (::fcntl(s->memfd(), F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
    if (errno == EBUSY) {
      return Status::FailedPrecondition(
          Quoted(name) +
          " is still mapped writable (by the caller, or by a process that inherited a mapping), "
          "or I/O in flight pins some of its pages (vmsplice, O_DIRECT, io_uring); remap it "
          "read-only, or retry once that I/O is done");
    }
    return PosixError("F_ADD_SEALS", errno);
  } else {
    s->region_->clear_recycler();  // Sealed memory can never hold another segment.
  }
  s->sealed_ = true;
  for (auto& h : s->holders_) h.writable = 0;  // What they map is read-only now.
  return s;
}

Status Registry::Lend(const std::shared_ptr<SegmentEntry>& s, std::uint64_t ticket,
                      std::uint32_t uid, std::int64_t lapse_unix_ns) {
  if (ticket == 0) return Status::InvalidArgument("ticket 0 is not a ticket");
  auto it = tickets_.find(ticket);
  if (it != tickets_.end()) {
    if (it->second.segment != nullptr) {
      return Status::AlreadyExists("ticket " + std::to_string(ticket) + " is in use");
    }
    bool same = it->second.redeemed.lock() == s;
    DropTicket(it);
    if (same) return Status::Ok();  // The receiver attached already.
    // Else another segment's early redeem (stale, or someone's guess): this lend holds.
  }
  std::size_t& mine = tickets_per_uid_[uid];
  if (mine >= kMaxTicketsPerUser) {
    refusals_.Count(Limit::kTicketsPerUser);
    return Status::ResourceExhausted("uid " + std::to_string(uid) + " has " + std::to_string(mine) +
                                     " arrays in flight, the most one user may");
  }
  ++mine;
  ++s->in_flight_;
  tickets_.emplace(ticket, Ticket{s, uid, lapse_unix_ns});
  ticket_lapses_.emplace_back(lapse_unix_ns, ticket);
  return Status::Ok();
}

void Registry::DropTicket(std::unordered_map<std::uint64_t, Ticket>::iterator it) {
  Ticket t = std::move(it->second);
  tickets_.erase(it);
  if (t.segment == nullptr) {
    --early_redeems_;
    auto per = early_redeems_per_uid_.find(t.uid);
    if (per != early_redeems_per_uid_.end() && --per->second == 0) {
      early_redeems_per_uid_.erase(per);
    }
    return;
  }
  --t.segment->in_flight_;
  auto per = tickets_per_uid_.find(t.uid);
  if (per != tickets_per_uid_.end() && --per->second == 0) tickets_per_uid_.erase(per);
  CheckReferences(*t.segment);
}

void Registry::Redeem(std::uint64_t ticket, const std::shared_ptr<SegmentEntry>& s,
                      std::uint32_t uid, std::int64_t lapse_unix_ns) {
  if (ticket == 0) return;
  auto it = tickets_.find(ticket);
  if (it != tickets_.end()) {
    if (it->second.segment == s) DropTicket(it);
    return;
  }
  std::size_t& mine = early_redeems_per_uid_[uid];
  if (mine >= kMaxTicketsPerUser) return;  // Then its ticket lapses instead.
  ++mine;
  ++early_redeems_;
  tickets_.emplace(ticket, Ticket{nullptr, uid, lapse_unix_ns, s});
  ticket_lapses_.emplace_back(lapse_unix_ns, ticket);
}

std::int64_t Registry::Expire(std::int64_t now_unix_ns) {
  while (!expiries_.empty() && expiries_.begin()->first.first <= now_unix_ns) {
    std::shared_ptr<SegmentEntry> s = expiries_.begin()->second.lock();
    expiries_.erase(expiries_.begin());
    if (s) AutoUnlink(*s, AutoCause::kTtl);
  }
  while (!ticket_lapses_.empty() && ticket_lapses_.front().first <= now_unix_ns) {
    auto [lapse, ticket] = ticket_lapses_.front();
    ticket_lapses_.pop_front();
    auto it = tickets_.find(ticket);
    if (it != tickets_.end() && it->second.lapse_unix_ns == lapse) {
      if (it->second.segment != nullptr) ++tickets_lapsed_;
      DropTicket(it);
    }
  }
  std::int64_t next = 0;
  if (!expiries_.empty()) next = expiries_.begin()->first.first;
  if (!ticket_lapses_.empty() && (next == 0 || ticket_lapses_.front().first < next)) {
    next = ticket_lapses_.front().first;
  }
  return next;
}

}  // namespace shmbroker::daemon
