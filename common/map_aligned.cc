#include "common/map_aligned.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

namespace shmbroker {

void* MapAligned(int fd, std::size_t length, int prot, std::size_t align) {
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  if (align == 0 || (align & (align - 1)) != 0 || align % page != 0) {
    errno = EINVAL;
    return MAP_FAILED;
  }
  if (length < align || align == page) return ::mmap(nullptr, length, prot, MAP_SHARED, fd, 0);
  if (length > SIZE_MAX - align) {
    errno = ENOMEM;
    return MAP_FAILED;
  }
  // Reserve room for an aligned start, then put the file over the aligned part. The reservation
  // keeps any other thread's mmap out of that range meanwhile, so MAP_FIXED replaces only our own
  // mapping. PROT_NONE private memory is not charged to the commit limit.
  std::size_t reserved = length + align;
  void* base = ::mmap(nullptr, reserved, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return MAP_FAILED;
  auto start = reinterpret_cast<std::uintptr_t>(base);
  std::uintptr_t aligned = (start + align - 1) & ~(std::uintptr_t{align} - 1);
  void* addr =
      ::mmap(reinterpret_cast<void*>(aligned), length, prot, MAP_SHARED | MAP_FIXED, fd, 0);
  if (addr == MAP_FAILED) {
    int err = errno;
    ::munmap(base, reserved);
    errno = err;
    return MAP_FAILED;
  }
  // The slack on both sides; the mapping itself ends at the page after its last byte.
  std::uintptr_t end = aligned + ((length + page - 1) & ~(page - 1));
  if (aligned > start) ::munmap(base, aligned - start);
  if (start + reserved > end) ::munmap(reinterpret_cast<void*>(end), start + reserved - end);
  return addr;
}

}  // namespace shmbroker
