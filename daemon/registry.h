// The segment registry: names to segments, memory accounting, permission checks.
//
// Not thread-safe: owned by the daemon's single event-loop thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "memfd.h"
#include "shmbroker/status.h"
#include "shmbroker/types.h"

namespace shmbroker::daemon {

// A peer's identity, from SO_PEERCRED / SO_PEERGROUPS at connect time.
struct Credentials {
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
  std::uint32_t pid = 0;
  std::vector<std::uint32_t> groups;  // Supplementary groups, when the kernel tells.
};

struct SegmentSpec {
  std::string name;
  std::string dtype;
  std::vector<std::uint64_t> shape;
  Order order = Order::kC;
  std::uint32_t mode = 0600;
  std::map<std::string, std::string> attrs;
};

// One named segment. The descriptors close when the last reference goes: the registry drops its
// reference at unlink, attachments and replies in flight hold theirs.
class Segment {
 public:
  // `created_unix_ns` 0 means now.
  Segment(std::uint64_t id, SegmentSpec spec, std::uint64_t nbytes, const Credentials& owner,
          std::uint64_t creator_connection, UniqueFd fd, std::int64_t created_unix_ns = 0);

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

  // Region ids name (memory, access) pairs: a read-only and a read-write region per segment.
  std::uint64_t RegionId(Access access) const { return id_ * 2 + (access == Access::kReadWrite); }

  // The read-write memfd (the daemon's own reference to the memory).
  int memfd() const { return rw_fd_.get(); }

  // The descriptor to hand out for `access` (the read-only one is opened on first use).
  Result<int> Fd(Access access);

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
  UniqueFd rw_fd_;
  UniqueFd ro_fd_;
};

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

struct PurgeResult {
  std::vector<std::shared_ptr<Segment>> removed;  // In name order.
  std::uint64_t bytes_freed = 0;
  std::uint64_t skipped_not_owner = 0;
};

struct RegistryOptions {
  std::uint64_t max_memory = 0;  // 0: no cap beyond the machine's.
  // Seams for tests (fault injection without flags in production code).
  std::function<std::uint64_t()> available_memory = AvailableMemory;
  std::function<Result<UniqueFd>(const std::string&, std::uint64_t)> make_memfd =
      CreateSegmentMemfd;
  // Told of every segment added by Create and removed by Unlink or Purge (not of restored ones),
  // e.g. to keep systemd's fd store in step.
  std::function<void(const Segment&)> on_created;
  std::function<void(const Segment&)> on_removed;
};

class Registry {
 public:
  explicit Registry(RegistryOptions options = {});

  // Validates `spec`, reserves its memory and registers it. ALREADY_EXISTS if the name is taken,
  // RESOURCE_EXHAUSTED over the cap or out of memory, INVALID_ARGUMENT for a bad spec.
  Result<std::shared_ptr<Segment>> Create(SegmentSpec spec, const Credentials& creds,
                                          std::uint64_t connection);

  // Re-registers a segment that survived a daemon restart (its memory and metadata came back
  // through systemd's fd store). Checks the spec and that `fd` is a memfd of the right size.
  Status Restore(std::uint64_t id, SegmentSpec spec, const Credentials& owner,
                 std::int64_t created_unix_ns, UniqueFd fd);

  // The segment, if `creds` may access it so. NOT_FOUND / PERMISSION_DENIED.
  Result<std::shared_ptr<Segment>> Open(std::string_view name, Access access,
                                        const Credentials& creds);

  // The segment for metadata only (anyone may look).
  Result<std::shared_ptr<Segment>> Find(std::string_view name);

  // Frees the name at once. Owner or root only.
  Status Unlink(std::string_view name, const Credentials& creds);

  // Segments whose names match the glob `pattern` (all if empty) and sort after `start_after`, in
  // name order, while `visit` returns true.
  Status List(std::string_view pattern, std::string_view start_after,
              const std::function<bool(const Segment&)>& visit) const;

  // Unlinks (or with `dry_run` only reports) every segment matching `selector` that `creds` may
  // unlink; INVALID_ARGUMENT for an empty selector or a bad pattern.
  Result<PurgeResult> Purge(const PurgeSelector& selector, const Credentials& creds, bool dry_run);

  // Counts an attachment of `s` by `connection` (and lets it go again).
  void Attach(Segment& s, std::uint64_t connection, Access access);
  void Detach(Segment& s, std::uint64_t connection, Access access);

  // Tracks which connections are open so a segment can tell whether its creator is.
  void ConnectionOpened(std::uint64_t connection) { open_connections_.insert(connection); }
  void ConnectionClosed(std::uint64_t connection) { open_connections_.erase(connection); }
  bool IsConnectionOpen(std::uint64_t connection) const {
    return open_connections_.count(connection) != 0;
  }

  static bool Allowed(const Segment& s, Access access, const Credentials& creds);

  std::size_t size() const { return segments_.size(); }
  std::uint64_t bytes_held() const { return bytes_held_; }
  std::uint64_t max_memory() const { return options_.max_memory; }

 private:
  // Validates a spec for a new segment (and that its name is free); returns its size in bytes.
  Result<std::uint64_t> CheckNew(const SegmentSpec& spec) const;

  RegistryOptions options_;
  std::map<std::string, std::shared_ptr<Segment>, std::less<>> segments_;
  std::set<std::uint64_t> open_connections_;
  std::uint64_t bytes_held_ = 0;
  std::uint64_t unchecked_bytes_ = 0;  // Created since the machine's memory was last checked.
  std::uint64_t next_id_ = 1;
};

}  // namespace shmbroker::daemon
