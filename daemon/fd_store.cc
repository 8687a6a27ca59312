#include "fd_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>

#include <spdlog/spdlog.h>

#include "memfd.h"
#include "store.pb.h"
#include "wire_convert.h"

namespace shmbroker::daemon {
namespace {

constexpr std::size_t kMaxMetaBytes = 1 << 20;

std::string DataName(std::uint64_t id) { return "seg-" + std::to_string(id); }
std::string MetaName(std::uint64_t id) { return "meta-" + std::to_string(id); }
std::string RegionName(std::uint64_t id) { return "region-" + std::to_string(id); }

enum class Kind { kData, kMeta, kRegion };

// "seg-12" -> (kData, 12); "meta-12" -> (kMeta, 12); "region-12" -> (kRegion, 12).
bool ParseStoreName(const std::string& name, Kind& kind, std::uint64_t& id) {
  std::string_view digits;
  for (auto [prefix, k] : {std::pair{"seg-", Kind::kData}, std::pair{"meta-", Kind::kMeta},
                           std::pair{"region-", Kind::kRegion}}) {
    if (name.rfind(prefix, 0) == 0) {
      kind = k;
      digits = std::string_view(name).substr(std::strlen(prefix));
      auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id);
      return ec == std::errc() && p == digits.data() + digits.size() && !digits.empty() && id != 0;
    }
  }
  return false;
}

UniqueFd MakeMetaMemfd(const SegmentEntry& s) {
  store::StoredSegment stored;
  stored.set_format(1);
  stored.set_id(s.id());
  DescribeSegment(s, stored.mutable_info());
  if (s.shared()) {
    stored.set_region_id(s.region()->id());
    stored.set_offset(s.offset());
  }
  std::string bytes = stored.SerializeAsString();

  UniqueFd fd(MemfdCreate("shmbroker-meta:" + s.name()));
  if (!fd) return fd;
  if (::write(fd.get(), bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()) ||
      ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) !=
          0) {
    return {};
  }
  return fd;
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

void FdStore::RegionAdded(const SharedRegion& r) {
  Send(RegionName(r.region()->id()), r.region()->memfd());
}

void FdStore::Added(const SegmentEntry& s) {
  UniqueFd meta = MakeMetaMemfd(s);
  if (!meta) {
    spdlog::warn("cannot write restart metadata for '{}': {}; it will not survive a restart",
                 s.name(), std::strerror(errno));
    return;
  }
  // The data goes first (a shared region went when it was made): a metadata entry without its
  // data is dropped at restore.
  if (!s.shared()) Send(DataName(s.id()), s.memfd());
  notifier_.Send("FDSTORE=1\nFDNAME=" + MetaName(s.id()), std::move(meta));
}

void FdStore::Removed(const SegmentEntry& s) {
  if (s.shared()) {
    notifier_.Send("FDSTOREREMOVE=1\nFDNAME=" + MetaName(s.id()));
  } else {
    Drop(s.id());
  }
}

void FdStore::Drop(std::uint64_t id) {
  notifier_.Send("FDSTOREREMOVE=1\nFDNAME=" + DataName(id));
  notifier_.Send("FDSTOREREMOVE=1\nFDNAME=" + MetaName(id));
}

std::size_t FdStore::Restore(std::vector<ListenFd>& fds, Registry& registry) {
  struct Pair {
    UniqueFd data, meta;
  };
  std::map<std::uint64_t, Pair> pairs;
  Arena& arena = registry.arena();
  for (auto& lf : fds) {
    Kind kind = Kind::kData;
    std::uint64_t id = 0;
    if (!lf.fd || !ParseStoreName(lf.name, kind, id)) continue;
    if (kind == Kind::kRegion) {
      if (Status s = arena.Adopt(id, std::move(lf.fd)); !s.ok()) {
        spdlog::warn("stored {}: {}; dropping it from the fd store", lf.name, s.ToString());
        notifier_.Send("FDSTOREREMOVE=1\nFDNAME=" + lf.name);
      }
      continue;
    }
    Pair& p = pairs[id];
    (kind == Kind::kData ? p.data : p.meta) = std::move(lf.fd);
  }
  std::size_t restored = 0;
  for (auto& [id, p] : pairs) {
    auto skip = [&, id = id](const std::string& why) {
      spdlog::warn("stored segment {}: {}; dropping it from the fd store", id, why);
      Drop(id);
    };
    if (!p.meta) {
      skip(p.data ? "its metadata is missing" : "its memory is missing");
      continue;
    }
    struct stat st {};
    if (::fstat(p.meta.get(), &st) != 0 || st.st_size <= 0 ||
        static_cast<std::size_t>(st.st_size) > kMaxMetaBytes) {
      skip("unreadable metadata");
      continue;
    }
    std::string bytes(static_cast<std::size_t>(st.st_size), '\0');
    store::StoredSegment stored;
    if (::pread(p.meta.get(), bytes.data(), bytes.size(), 0) != st.st_size ||
        !stored.ParseFromString(bytes) || stored.format() != 1 || stored.id() != id) {
      skip("corrupt metadata");
      continue;
    }
    const auto& info = stored.info();
    SegmentSpec spec = SpecFromWire(info);
    Credentials owner{info.uid(), info.gid(), info.creator_pid(), {}};
    std::string name = spec.name;
    if (stored.region_id() != 0) {  // A block of a shared region.
      if (p.data) {
        skip("'" + name + "' has both a region of its own and a shared one");
        continue;
      }
      Status s = registry.RestoreShared(id, std::move(spec), owner, info.created_unix_ns(),
                                        stored.region_id(), stored.offset());
      if (!s.ok()) {
        skip("'" + name + "': " + s.ToString());
        continue;
      }
      ++restored;
      continue;
    }
    if (!p.data) {
      skip("its memory is missing");
      continue;
    }
    // The memory is chmod 0600 to the daemon that made it: a daemon running as another uid (a
    // DynamicUser= that changed) could not reopen it read-only for readers.
    struct stat data_st {};
    if (::fstat(p.data.get(), &data_st) == 0 && data_st.st_uid != ::geteuid()) {
      spdlog::warn(
          "stored segment '{}' belongs to uid {}, not to this daemon's uid {}: "
          "read-only attaches to it will fail",
          name, data_st.st_uid, ::geteuid());
    }
    Status s =
        registry.Restore(id, std::move(spec), owner, info.created_unix_ns(), std::move(p.data));
    if (!s.ok()) {
      skip("'" + name + "': " + s.ToString());
      continue;
    }
    ++restored;
  }
  for (std::uint64_t id : arena.DropUnclaimed()) {
    spdlog::info("stored shared region {} holds no segment any more; dropping it", id);
    notifier_.Send("FDSTOREREMOVE=1\nFDNAME=" + RegionName(id));
  }
  // Clients of the old daemon may still map the restored regions' free blocks: nothing is carved
  // from them any more, and each goes when its last segment does.
  arena.RetireAdopted(
      [this](std::uint64_t id) { notifier_.Send("FDSTOREREMOVE=1\nFDNAME=" + RegionName(id)); });
  return restored;
}

}  // namespace shmbroker::daemon
