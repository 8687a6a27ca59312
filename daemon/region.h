// A region: a memfd the daemon hands to clients, who map it whole and find segments in it at an
// (offset, length). Today each segment has a region of its own.
//
// Descriptors: the read-write one, and a read-only one reopened on first use (a reader gets only
// that one, so the kernel refuses it writable mappings). On the wire a region id names a (region,
// access) pair: id * 2 + 1 read-write, id * 2 read-only.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/unique_fd.h"
#include "shmbroker/status.h"
#include "shmbroker/types.h"

namespace shmbroker::daemon {

class Region {
 public:
  Region(std::uint64_t id, UniqueFd memfd, std::uint64_t size);
  ~Region();
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  std::uint64_t id() const { return id_; }
  std::uint64_t size() const { return size_; }
  std::uint64_t WireId(Access access) const { return id_ * 2 + (access == Access::kReadWrite); }

  // The read-write memfd (-1 once dropped).
  int memfd() const { return rw_.get(); }
  // The descriptor to hand out for `access`.
  Result<int> Fd(Access access);
  // Closes the descriptors: nobody will be sent this region again. The memory lives on in the
  // mappings of the clients that have it.
  void DropFds();

  // Descriptors all regions hold now (for the daemon's fd budget).
  static std::size_t open_fds() { return open_fds_; }

 private:
  void Set(UniqueFd& slot, UniqueFd fd);

  const std::uint64_t id_;
  const std::uint64_t size_;
  UniqueFd rw_, ro_;
  static std::size_t open_fds_;  // The event loop's thread only.
};

}  // namespace shmbroker::daemon
