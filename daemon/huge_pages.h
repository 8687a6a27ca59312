// 2 MiB pages for large segments. With shmem_enabled = never (a common default) a memfd gets
// 4 KiB pages only, and for big segments page handling dominates: a reader's map + sum of
// 763 MiB costs ~3x more and munmap ~100x more than with 2 MiB pages. MADV_COLLAPSE (Linux 6.1)
// turns a memfd's reserved pages into 2 MiB pages whatever that setting says (except "deny").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "shmbroker/status.h"

namespace shmbroker::daemon {

constexpr std::uint64_t kHugePageBytes = 2 << 20;

// kAuto: collapse segments of 2 MiB and more where the kernel can. kNever: 4 KiB pages only.
enum class HugePages { kAuto, kNever };

// "auto" or "never"; INVALID_ARGUMENT otherwise.
Result<HugePages> ParseHugePages(std::string_view text);

// Turns the pages of the first floor(size / 2 MiB) * 2 MiB bytes of memfd `fd` (`size` bytes)
// into 2 MiB pages; the tail below 2 MiB keeps 4 KiB pages. Contents and seals are kept. Returns
// the bytes now backed by 2 MiB pages, as the kernel reports them for a mapping of the file; 0
// when the kernel cannot (before 6.1, or shmem_enabled = deny), has no 2 MiB block free now,
// /proc is hidden, or size < 2 MiB. Never touches the memory.
//
// Each 2 MiB block needs at least one allocated page, the others may be holes (they become
// zeroes): the kernel stops at the first block with none (EINVAL), so later blocks keep 4 KiB
// pages. Cost for 763 MiB on the 2-vCPU VM: 0.45-2.1 s when every page was allocated (by
// fallocate: the kernel copies each 4 KiB page into the new 2 MiB page, 72% of the time in its
// page copy) but ~45 ms when only one 4 KiB page per 2 MiB block exists. So for a new segment:
// fallocate(fd, 0, offset, 4096) at each 2 MiB offset, collapse, then fallocate the whole size
// (which reserves whatever was not collapsed, and reports ENOSPC as before). Blocks for that
// long: call it off the event loop.
std::uint64_t CollapseToHugePages(int fd, std::uint64_t size);

// Bytes of this process's mapping [addr, addr+length) (a whole mapping) mapped with PMD entries,
// i.e. by 2 MiB pages, from /proc/self/smaps; 0 when /proc is hidden.
std::uint64_t PmdMappedBytes(void* addr, std::size_t length);

// Whether CollapseToHugePages works on this kernel, found out on the first call (thread-safe) by
// collapsing a 2 MiB memfd. A transient failure then (no free 2 MiB block) answers false for the
// process's lifetime: huge pages are only an optimisation.
bool HugePagesSupported();

}  // namespace shmbroker::daemon
