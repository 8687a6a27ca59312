#include "huge_pages.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/map_aligned.h"
#include "common/posix.h"
#include "common/unique_fd.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

namespace shmbroker::daemon {

// Bytes of [addr, addr+length) mapped with PMD entries, i.e. by 2 MiB pages, from the mapping's
// entry in /proc/self/smaps (which must cover exactly that range). Reading smaps walks the page
// tables of every mapping of the process: measured 0.2-0.5 ms in a process with a few dozen
// mappings (the daemon maps no segments), small next to the collapse (45 ms and more per
// 763 MiB, 2.5 ms for 2 MiB).
std::uint64_t PmdMappedBytes(void* addr, std::size_t length) {
  std::string smaps = ReadWholeFile("/proc/self/smaps");
  char header[64];
  auto start = reinterpret_cast<std::uintptr_t>(addr);
  std::snprintf(header, sizeof(header), "%lx-%lx ", static_cast<unsigned long>(start),
                static_cast<unsigned long>(start + length));
  std::size_t begin = smaps.rfind(header, 0) == 0 ? 0 : smaps.find(std::string("\n") + header);
  if (begin == std::string::npos) return 0;
  // VmFlags is the last field of every entry.
  std::size_t end = smaps.find("\nVmFlags:", begin);
  if (end == std::string::npos) end = smaps.size();
  std::uint64_t kib = 0;
  // A memfd shows as shmem; FilePmdMapped in case a kernel ever counts it as a file.
  for (const char* key : {"\nShmemPmdMapped:", "\nFilePmdMapped:"}) {
    std::size_t pos = smaps.find(key, begin);
    if (pos < end) kib += std::strtoull(smaps.c_str() + pos + std::strlen(key), nullptr, 10);
  }
  return kib * 1024;
}

Result<HugePages> ParseHugePages(std::string_view text) {
  if (text == "auto") return HugePages::kAuto;
  if (text == "never") return HugePages::kNever;
  return Status::InvalidArgument("huge pages '" + std::string(text) +
                                 "' must be 'auto' or 'never'");
}

std::uint64_t CollapseToHugePages(int fd, std::uint64_t size) {
  std::uint64_t length = size & ~(kHugePageBytes - 1);
  if (length == 0) return 0;
  // PMD entries, and so huge pages, need a 2 MiB-aligned address for a 2 MiB-aligned offset.
  void* addr = MapAligned(fd, length, PROT_READ | PROT_WRITE, kHugePageBytes);
  if (addr == MAP_FAILED) return 0;
  // The kernel copies the pages of each 2 MiB block into a new 2 MiB page and maps it here with
  // a PMD entry. An error only tells why the last block failed (EINVAL: no MADV_COLLAPSE, denied
  // for shmem, or a block with no page at all; ENOMEM: no free 2 MiB block; EAGAIN, EBUSY: pages
  // busy or over the cgroup's limit) while earlier blocks may have been collapsed: count what the
  // mapping shows, whatever madvise returned.
  ::madvise(addr, length, MADV_COLLAPSE);
  std::uint64_t huge = PmdMappedBytes(addr, length);
  ::munmap(addr, length);
  return huge;
}

bool HugePagesSupported() {
  static const bool supported = [] {
    UniqueFd fd(::memfd_create("shmbroker-huge-page-probe", MFD_CLOEXEC));
    if (!fd || ::ftruncate(fd.get(), kHugePageBytes) != 0 ||
        ::fallocate(fd.get(), 0, 0, kHugePageBytes) != 0) {
      return false;
    }
    return CollapseToHugePages(fd.get(), kHugePageBytes) == kHugePageBytes;
  }();
  return supported;
}

}  // namespace shmbroker::daemon
