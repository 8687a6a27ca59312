// Backing memory for segments: sealed, fully reserved memfds.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "huge_pages.h"
#include "shmbroker/status.h"
#include "wire.h"

namespace shmbroker::daemon {

// A memfd of exactly `size` bytes: close-on-exec, sealed against grow, shrink and further seals,
// every page reserved with fallocate (so running out of memory is an error here, never a SIGBUS
// in a client later), and chmod 0600 so a reader of another uid cannot reopen it read-write
// through /proc. `label` names it in /proc/PID/fd and /proc/PID/maps.
// With `huge` = kAuto, a segment of 2 MiB and more is backed by 2 MiB pages where the kernel can
// (see CollapseToHugePages), the tail below a 2 MiB multiple by 4 KiB pages.
// Errors: RESOURCE_EXHAUSTED when the memory cannot be reserved, INTERNAL otherwise.
struct SegmentMemory {
  UniqueFd fd;
  std::uint64_t huge_bytes = 0;  // Of it, backed by 2 MiB pages.
};
// `seal_size` false (--prealloc memory, cut to size when first used) leaves out the size seals.
Result<SegmentMemory> CreateSegmentMemfd(const std::string& label, std::uint64_t size,
                                         HugePages huge = HugePages::kNever, bool seal_size = true);

// memfd_create with sealing allowed, close-on-exec and (where the kernel has it) no exec; `label`
// cut to the 249 bytes the kernel takes. An fd, or -1 with errno.
int MemfdCreate(std::string_view label);

// A read-only descriptor for the same memory (reopened O_RDONLY through /proc/self/fd), so that a
// reader can neither map it writable nor mprotect a mapping to writable.
Result<UniqueFd> ReopenReadOnly(int fd);

// Bytes the machine can still back now: MemAvailable + SwapFree, bounded by this process's
// cgroup memory.max headroom when there is one. Used to refuse a create that could only end in
// the OOM killer (fallocate on memfd has no size limit of its own).
std::uint64_t AvailableMemory();

// The machine's physical memory (MemTotal), for defaults such as --max-memory-per-user.
std::uint64_t PhysicalMemory();

// The memory this process may use: MemTotal + SwapTotal, or its cgroup's memory.max if lower.
std::uint64_t MemoryLimit();

}  // namespace shmbroker::daemon
