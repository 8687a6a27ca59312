#include "segment_entry.h"

#include "common/posix.h"
#include "memfd.h"

namespace shmbroker::daemon {
namespace {

std::string Quoted(std::string_view name) { return "'" + std::string(name) + "'"; }

}  // namespace

SegmentEntry::SegmentEntry(std::uint64_t id, SegmentSpec spec, std::uint64_t nbytes,
                           const Credentials& owner, std::uint64_t creator_connection, UniqueFd fd,
                           std::int64_t created_unix_ns)
    : id_(id),
      spec_(std::move(spec)),
      nbytes_(nbytes),
      uid_(owner.uid),
      gid_(owner.gid),
      creator_pid_(owner.pid),
      creator_connection_(creator_connection),
      created_unix_ns_(created_unix_ns != 0 ? created_unix_ns : NowUnixNs()),
      rw_fd_(std::move(fd)) {}

Result<int> SegmentEntry::Fd(Access access) {
  if (!rw_fd_) return Status::Internal("segment " + Quoted(name()) + " has no memory");
  if (access == Access::kReadWrite) return rw_fd_.get();
  if (!ro_fd_) {
    auto ro = ReopenReadOnly(rw_fd_.get());
    if (!ro.ok()) return ro.status();
    ro_fd_ = std::move(ro).value();
  }
  return ro_fd_.get();
}

}  // namespace shmbroker::daemon
