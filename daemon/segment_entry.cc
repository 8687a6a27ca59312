#include "segment_entry.h"

#include "common/posix.h"

namespace shmbroker::daemon {
SegmentEntry::SegmentEntry(std::uint64_t id, SegmentSpec spec, std::uint64_t nbytes,
                           const Credentials& owner, std::uint64_t creator_connection,
                           std::shared_ptr<Region> region, std::int64_t created_unix_ns)
    : id_(id),
      spec_(std::move(spec)),
      nbytes_(nbytes),
      uid_(owner.uid),
      gid_(owner.gid),
      creator_pid_(owner.pid),
      creator_connection_(creator_connection),
      created_unix_ns_(created_unix_ns != 0 ? created_unix_ns : NowUnixNs()),
      region_(std::move(region)) {}

void SegmentEntry::Retire() {
  if (charge_) {
    charge_->Unlinked();
  } else {
    region_->Retire();
  }
}

}  // namespace shmbroker::daemon
