#include "fd_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <map>

#include <spdlog/spdlog.h>

#include "common/units.h"
#include "journal.h"
#include "memfd.h"
#include "store.pb.h"
#include "wire_convert.h"

namespace shmbroker::daemon {
namespace {

constexpr std::size_t kMaxMetaBytes = 1 << 20;
// A rewrite is due when the journal is twice its live records and this much more.
constexpr std::uint64_t kRewriteSlack = 256 << 10;
// A journal that cannot be written is tried again at most this often.
constexpr auto kRetryInterval = std::chrono::seconds(1);

std::string DataName(std::uint64_t id) { return "seg-" + std::to_string(id); }
std::string RegionName(std::uint64_t id) { return "region-" + std::to_string(id); }
std::string JournalName(std::uint64_t generation) {
  return "journal-" + std::to_string(generation);
}

enum class Kind { kData, kMeta, kRegion, kJournal };

// "seg-12" -> (kData, 12); "meta-12" -> (kMeta, 12); "region-12" -> (kRegion, 12);
// "journal-3" -> (kJournal, 3).
bool ParseStoreName(const std::string& name, Kind& kind, std::uint64_t& id) {
  std::string_view digits;
  for (auto [prefix, k] :
       {std::pair{"seg-", Kind::kData}, std::pair{"meta-", Kind::kMeta},
        std::pair{"region-", Kind::kRegion}, std::pair{"journal-", Kind::kJournal}}) {
    if (name.rfind(prefix, 0) == 0) {
      kind = k;
      digits = std::string_view(name).substr(std::strlen(prefix));
      auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id);
      return ec == std::errc() && p == digits.data() + digits.size() && !digits.empty() && id != 0;
    }
  }
  return false;
}

std::string Describe(const SegmentEntry& s) {
  store::StoredSegment stored;
  stored.set_format(1);
  stored.set_id(s.id());
  DescribeSegment(s, stored.mutable_info());
  if (s.shared()) {
    stored.set_region_id(s.region()->id());
    stored.set_offset(s.offset());
  }
  return stored.SerializeAsString();
}

// The bytes of an older daemon's meta-<id> memfd, or "" when unreadable.
std::string ReadMeta(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size <= 0 ||
      static_cast<std::size_t>(st.st_size) > kMaxMetaBytes) {
    return {};
  }
  std::string bytes(static_cast<std::size_t>(st.st_size), '\0');
  if (::pread(fd, bytes.data(), bytes.size(), 0) != st.st_size) return {};
  return bytes;
}

}  // namespace

void FdStore::Send(const std::string& name, int fd) {
  // The store keeps its own reference; ours stays.
  UniqueFd dup(::fcntl(fd, F_DUPFD_CLOEXEC, 3));
  if (!dup) {
    spdlog::warn("cannot hand {} to the fd store: {}", name, std::strerror(errno));
    return;
  }
  notifier_.Send("FDSTORE=1\nFDNAME=" + name, std::move(dup));
}

void FdStore::Count(std::uint32_t uid, int delta) {
  std::size_t& mine = entries_of_[uid];
  if (delta > 0) {
    ++mine;
    ++entries_;
  } else {
    if (mine > 0) --mine;
    if (entries_ > 0) --entries_;
  }
  if (mine == 0) entries_of_.erase(uid);
}

void FdStore::SetPut(std::uint64_t id, std::uint32_t uid, std::size_t size) {
  if (auto it = puts_.find(id); it != puts_.end()) {
    live_bytes_ -= it->second.size;
    auto of = live_of_.find(it->second.uid);
    if (of != live_of_.end() && (of->second -= it->second.size) == 0) live_of_.erase(of);
    puts_.erase(it);
  }
  if (size == 0) return;
  puts_.emplace(id, Put{static_cast<std::uint32_t>(size), uid});
  live_bytes_ += size;
  live_of_[uid] += size;
}

Status FdStore::MayStore(std::uint32_t uid, std::size_t n, std::size_t record_bytes) const {
  // The journal grows to twice its live records before a rewrite, and must stay readable.
  if (live_bytes_ + record_bytes > max_live_bytes_) {
    return Status::ResourceExhausted("the restart journal holds " + HumanBytes(live_bytes_) +
                                     " of segment metadata, the " + "most it may (" +
                                     HumanBytes(max_live_bytes_) +
                                     "); unlink segments nobody needs, or give them fewer attrs");
  }
  auto live = live_of_.find(uid);
  std::uint64_t mine_bytes = live == live_of_.end() ? 0 : live->second;
  if (uid != 0 && mine_bytes + record_bytes > max_live_bytes_ / 4) {
    return Status::ResourceExhausted(
        "uid " + std::to_string(uid) + " has " + HumanBytes(mine_bytes) +
        " of segment metadata in the restart journal, the most one user may (a quarter of " +
        HumanBytes(max_live_bytes_) +
        "); unlink segments it does not need, or give them fewer "
        "attrs");
  }
  constexpr std::size_t kJournalSlots = 2;  // The journal and its next generation.
  std::size_t room = max_entries_ > kJournalSlots ? max_entries_ - kJournalSlots : 0;
  if (entries_ + n > room) {
    return Status::ResourceExhausted(
        "the service manager's fd store is full (" + std::to_string(entries_) + " of " +
        std::to_string(max_entries_) +
        " entries, --fd-store-max): a new segment would not survive a restart; unlink "
        "segments nobody needs, or raise FileDescriptorStoreMax and --fd-store-max together");
  }
  auto it = entries_of_.find(uid);
  std::size_t mine = it == entries_of_.end() ? 0 : it->second;
  if (uid != 0 && mine + n > room / 4) {
    return Status::ResourceExhausted(
        "uid " + std::to_string(uid) + " holds " + std::to_string(mine) +
        " of the service manager's fd store entries, the most one user may (a quarter of "
        "--fd-store-max " +
        std::to_string(max_entries_) +
        "); unlink segments it does not need, or seal fewer small ones (each gets an entry)");
  }
  return Status::Ok();
}

void FdStore::RegionAdded(const SharedRegion& r) {
  Send(RegionName(r.region()->id()), r.region()->memfd());
  if (region_owner_.emplace(r.region()->id(), r.key().uid).second) Count(r.key().uid, +1);
}

void FdStore::Added(const SegmentEntry& s) {
  std::string record = Journal::EncodePut(s.id(), Describe(s));
  SetPut(s.id(), s.uid(), record.size());
  if (s.shared()) return Write(record, 0);  // Its region went when it was made.
  // The data first, and the record once the manager has it: a record whose data is missing is
  // dropped at restore, and may replace one that was good (a small segment's, before a seal).
  Send(DataName(s.id()), s.memfd());
  if (data_owner_.emplace(s.id(), s.uid()).second) Count(s.uid(), +1);
  auto write = [this, id = s.id(), record = std::move(record)] {
    if (puts_.count(id) != 0) Write(record, 0);  // Unless removed meanwhile.
  };
  if (!notifier_.WhenSent(write)) write();
}

void FdStore::Removed(const SegmentEntry& s) {
  SetPut(s.id(), s.uid(), 0);
  // The registry still names it while it is being removed: a rewrite now must leave it out.
  Write(Journal::EncodeDelete(s.id()), s.id());
  if (!s.shared()) notifier_.Send("FDSTOREREMOVE=1\nFDNAME=" + DataName(s.id()));
  if (auto it = data_owner_.find(s.id()); it != data_owner_.end()) {
    Count(it->second, -1);
    data_owner_.erase(it);
  }
}

void FdStore::Write(std::string_view record, std::uint64_t removing) {
  if ((logs_.empty() || logs_.back().removing) && !Rewrite(removing)) return;
  bool failed = false;
  for (Log& log : logs_) {
    // One removed already only needs to stay in step until systemd has dropped it.
    if (!Journal::Append(log.fd.get(), log.tail, record) && !log.removing) failed = true;
  }
  Log& current = logs_.back();
  if (failed) {
    spdlog::warn("cannot append to restart journal {}: {}; writing a new one", current.generation,
                 std::strerror(errno));
    Rewrite(removing);
  } else if (current.tail > 2 * live_bytes_ + kRewriteSlack) {
    Rewrite(removing);
  }
}

bool FdStore::Rewrite(std::uint64_t removing) {
  if (registry_ == nullptr) return false;
  auto now = std::chrono::steady_clock::now();
  bool retry = logs_.empty() || logs_.back().removing;
  if (retry && last_failure_ && now - *last_failure_ < kRetryInterval) return false;
  Log log{next_generation_++, Journal::Make(), Journal::kMagic.size(), false};
  bool ok = static_cast<bool>(log.fd);
  puts_.clear();
  live_of_.clear();
  live_bytes_ = 0;
  std::string batch;
  auto flush = [&] {
    ok = ok && Journal::Append(log.fd.get(), log.tail, batch);
    batch.clear();
    return ok;
  };
  if (ok) {
    Status listed = registry_->List("", "", [&](const SegmentEntry& s) {
      if (s.id() == removing) return true;
      std::string record = Journal::EncodePut(s.id(), Describe(s));
      SetPut(s.id(), s.uid(), record.size());
      batch += record;
      return batch.size() < (1 << 20) || flush();
    });
    ok = listed.ok() && flush();
  }
  // Earlier generations leave the store after this one is in it (messages go in order).
  auto retire_all = [&] {
    for (Log& old : logs_) {
      if (!old.removing) notifier_.Send("FDSTOREREMOVE=1\nFDNAME=" + JournalName(old.generation));
      old.removing = true;
    }
    std::uint64_t last = logs_.empty() ? 0 : logs_.back().generation;
    auto forget = [this, last, alive = std::weak_ptr<int>(alive_)] {
      if (alive.expired()) return;  // The notifier may outlive this store.
      std::erase_if(logs_, [last](const Log& l) { return l.removing && l.generation <= last; });
    };
    if (last != 0 && !notifier_.WhenSent(forget)) forget();
  };
  if (!ok) {
    spdlog::warn(
        "cannot write the restart journal: {}; segments will not survive a restart "
        "until it can be written again",
        std::strerror(errno));
    last_failure_ = now;
    retire_all();
    return false;
  }
  last_failure_.reset();
  Send(JournalName(log.generation), log.fd.get());
  retire_all();
  logs_.push_back(std::move(log));
  return true;
}

void FdStore::Drop(std::uint64_t id) { notifier_.Send("FDSTOREREMOVE=1\nFDNAME=" + DataName(id)); }

std::size_t FdStore::Restore(std::vector<ListenFd>& fds, Registry& registry) {
  registry_ = &registry;
  std::map<std::uint64_t, UniqueFd> data;
  std::map<std::uint64_t, std::string> records;                // Segment id -> StoredSegment bytes.
  std::map<std::uint64_t, UniqueFd, std::greater<>> journals;  // Newest first.
  std::vector<std::string> superseded;                         // Entries the new journal replaces.
  Arena& arena = registry.arena();
  for (auto& lf : fds) {
    Kind kind = Kind::kData;
    std::uint64_t id = 0;
    if (!lf.fd || !ParseStoreName(lf.name, kind, id)) continue;
    switch (kind) {
      case Kind::kRegion:
        if (Status s = arena.Adopt(id, std::move(lf.fd)); !s.ok()) {
          spdlog::warn("stored {}: {}; dropping it from the fd store", lf.name, s.ToString());
          notifier_.Send("FDSTOREREMOVE=1\nFDNAME=" + lf.name);
        }
        break;
      case Kind::kJournal:
        next_generation_ = std::max(next_generation_, id + 1);
        superseded.push_back(lf.name);
        journals[id] = std::move(lf.fd);
        break;
      case Kind::kMeta:
        superseded.push_back(lf.name);
        if (std::string bytes = ReadMeta(lf.fd.get()); !bytes.empty()) {
          records[id] = std::move(bytes);
        } else {
          spdlog::warn("stored segment {}: unreadable metadata; skipping it", id);
        }
        break;
      case Kind::kData:
        data[id] = std::move(lf.fd);
        break;
    }
  }
  // The newest readable journal; an older one only survives a crash in the middle of a rewrite
  // and says nothing the newest does not. Its records take precedence over meta-<id> entries.
  for (auto& [generation, fd] : journals) {
    auto contents = Journal::Read(fd.get());
    if (!contents.ok()) {
      spdlog::warn("stored journal-{}: {}; ignoring it", generation, contents.status().message());
      continue;
    }
    if (!contents->problem.empty()) {
      spdlog::warn(
          "stored journal-{} ends in {} (a crash while it was written): restoring what "
          "precedes it",
          generation, contents->problem);
    }
    for (auto& [id, bytes] : contents->live) records[id] = std::move(bytes);
    break;
  }
  std::size_t restored = 0;
  for (auto& [id, bytes] : records) {
    UniqueFd own;
    if (auto it = data.find(id); it != data.end()) {
      own = std::move(it->second);
      data.erase(it);
    }
    bool had_data = static_cast<bool>(own);
    auto skip = [&, id = id](const std::string& why) {
      spdlog::warn("stored segment {}: {}; dropping it from the fd store", id, why);
      if (had_data) Drop(id);
    };
    store::StoredSegment stored;
    if (!stored.ParseFromString(bytes) || stored.format() != 1 || stored.id() != id) {
      skip("corrupt metadata");
      continue;
    }
    const auto& info = stored.info();
    SegmentSpec spec = SpecFromWire(info);
    Credentials owner{info.uid(), info.gid(), info.creator_pid(), {}};
    std::string name = spec.name;
    if (stored.region_id() != 0) {  // A block of a shared region.
      if (own) {
        skip("'" + name + "' has both a region of its own and a shared one");
        continue;
      }
      Status s = registry.RestoreShared(id, std::move(spec), owner, info.created_unix_ns(),
                                        stored.region_id(), stored.offset(), info.sealed());
      if (!s.ok()) {
        skip("'" + name + "': " + s.ToString());
        continue;
      }
      ++restored;
      continue;
    }
    if (!own) {
      skip("its memory is missing");
      continue;
    }
    // The memory is chmod 0600 to the daemon that made it: a daemon running as another uid (a
    // DynamicUser= that changed) could not reopen it read-only for readers.
    struct stat data_st {};
    if (::fstat(own.get(), &data_st) == 0 && data_st.st_uid != ::geteuid()) {
      spdlog::warn(
          "stored segment '{}' belongs to uid {}, not to this daemon's uid {}: "
          "read-only attaches to it will fail",
          name, data_st.st_uid, ::geteuid());
    }
    std::uint32_t uid = owner.uid;
    Status s = registry.Restore(id, std::move(spec), owner, info.created_unix_ns(), std::move(own));
    if (!s.ok()) {
      skip("'" + name + "': " + s.ToString());
      continue;
    }
    if (data_owner_.emplace(id, uid).second) Count(uid, +1);
    ++restored;
  }
  for (auto& [id, fd] : data) {
    spdlog::warn("stored segment {}: its metadata is missing; dropping it from the fd store", id);
    Drop(id);
  }
  // What was restored goes into a new journal before the entries it replaces leave the store.
  Rewrite(0);
  for (const std::string& name : superseded) notifier_.Send("FDSTOREREMOVE=1\nFDNAME=" + name);
  for (std::uint64_t id : arena.DropUnclaimed()) {
    spdlog::info("stored shared region {} holds no segment any more; dropping it", id);
    notifier_.Send("FDSTOREREMOVE=1\nFDNAME=" + RegionName(id));
  }
  arena.ForEachRegion([this](const SharedRegion& r) {
    if (region_owner_.emplace(r.region()->id(), r.key().uid).second) Count(r.key().uid, +1);
  });
  // Clients of the old daemon may still map the restored regions' free blocks: nothing is carved
  // from them any more, and each goes when its last segment does.
  arena.RetireAdopted([this](std::uint64_t id) {
    notifier_.Send("FDSTOREREMOVE=1\nFDNAME=" + RegionName(id));
    if (auto it = region_owner_.find(id); it != region_owner_.end()) {
      Count(it->second, -1);
      region_owner_.erase(it);
    }
  });
  return restored;
}

}  // namespace shmbroker::daemon
