#include "region.h"

#include <sys/stat.h>

#include "memfd.h"

namespace shmbroker::daemon {

std::size_t Region::open_fds_ = 0;
std::map<std::uint32_t, std::size_t> Region::open_fds_by_owner_;
std::uint64_t Region::huge_total_ = 0;

void Region::set_huge_bytes(std::uint64_t bytes) {
  huge_total_ += bytes - huge_bytes_;
  huge_bytes_ = bytes;
}

Region::Region(std::uint64_t id, UniqueFd memfd, std::uint64_t size, std::shared_ptr<Ledger> ledger,
               std::uint32_t owner)
    : id_(id), size_(size), ledger_(std::move(ledger)), owner_(owner) {
  struct stat st {};
  if (::fstat(memfd.get(), &st) == 0) inode_ = st.st_ino;
  Set(rw_, std::move(memfd));
  if (ledger_) ledger_->Charge(owner_, size_);
}

Region::~Region() {
  huge_total_ -= huge_bytes_;
  if (ledger_) ledger_->Release(owner_, size_, retired_);
  if (recycler_) {
    UniqueFd fd = kept_ ? std::move(kept_) : std::move(rw_);
    if (fd) CountFds(-1);  // The pool's from now on.
    Set(ro_, UniqueFd());
    Set(rw_, UniqueFd());
    if (fd) recycler_(std::move(fd), size_, huge_bytes_);
    return;
  }
  DropFds();
}

void Region::clear_recycler() {
  recycler_ = nullptr;
  Set(kept_, UniqueFd());
}

void Region::Retire() {
  if (retired_) return;
  retired_ = true;
  if (ledger_) ledger_->Unlinked(size_);
  if (pins_ == 0) DropFds();
}

Region::Pin::Pin(std::shared_ptr<Region> region) : region_(std::move(region)) {
  if (region_) ++region_->pins_;
}

Region::Pin& Region::Pin::operator=(Pin&& o) noexcept {
  if (this != &o) {
    Release();
    region_ = std::move(o.region_);
  }
  return *this;
}

Region::Pin::~Pin() { Release(); }

void Region::Pin::Release() {
  if (!region_) return;
  if (--region_->pins_ == 0 && region_->retired_) region_->DropFds();
  region_.reset();
}

void Region::Set(UniqueFd& slot, UniqueFd fd) {
  if (slot) CountFds(-1);
  if (fd) CountFds(+1);
  slot = std::move(fd);
}

void Region::CountFds(int delta) {
  open_fds_ += delta;
  std::size_t& mine = open_fds_by_owner_[owner_];
  mine += delta;
  if (mine == 0) open_fds_by_owner_.erase(owner_);
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
  if (recycler_ && rw_) {
    kept_ = std::move(rw_);  // Still counted in open_fds_.
    return;
  }
  Set(rw_, UniqueFd());
}

}  // namespace shmbroker::daemon
