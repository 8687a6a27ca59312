// Shared mappings at an aligned address, so that the kernel can map 2 MiB pages with one PMD
// entry (it only does so where virtual and file offsets are both 2 MiB-aligned). Internal; not
// installed.
#pragma once

#include <cstddef>

namespace shmbroker {

// mmap(2) of `length` bytes of `fd` from offset 0, MAP_SHARED with `prot`, at an address that is
// a multiple of `align` (a power of two, at least the page size) when length >= align; below that
// a plain mmap, since no huge page fits anyway. Returns MAP_FAILED with errno set on failure
// (EINVAL for a bad `align`). Leaves no other mapping behind: unmap with munmap(addr, length).
void* MapAligned(int fd, std::size_t length, int prot, std::size_t align);

}  // namespace shmbroker
