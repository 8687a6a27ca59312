#include "region.h"

#include "memfd.h"

namespace shmbroker::daemon {

std::size_t Region::open_fds_ = 0;

Region::Region(std::uint64_t id, UniqueFd memfd, std::uint64_t size) : id_(id), size_(size) {
  Set(rw_, std::move(memfd));
}

Region::~Region() { DropFds(); }

void Region::Set(UniqueFd& slot, UniqueFd fd) {
  if (slot) --open_fds_;
  if (fd) ++open_fds_;
  slot = std::move(fd);
}

Result<int> Region::Fd(Access access) {
  if (!rw_) return Status::Internal("region " + std::to_string(id_) + " has no memory any more");
  if (access == Access::kReadWrite) return rw_.get();
  if (!ro_) {
    auto ro = ReopenReadOnly(rw_.get());
    if (!ro.ok()) return ro.status();
    Set(ro_, std::move(ro).value());
  }
  return ro_.get();
}

void Region::DropFds() {
  Set(ro_, UniqueFd());
  Set(rw_, UniqueFd());
}

}  // namespace shmbroker::daemon
