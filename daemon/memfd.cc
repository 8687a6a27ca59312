#include "memfd.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/posix.h"
#include "common/text.h"

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

namespace shmbroker::daemon {
namespace {

// memfd_create refuses (EINVAL) names longer than NAME_MAX minus its "memfd:" prefix.
constexpr std::size_t kMaxMemfdLabel = 249;

}  // namespace

int MemfdCreate(std::string_view label) {
  // The label only shows in /proc/PID/fd and maps: a cut one is fine. Cut, it can never be the
  // EINVAL that would be taken below for a kernel without MFD_NOEXEC_SEAL.
  std::string name(TruncateUtf8(label, kMaxMemfdLabel));
  // MFD_NOEXEC_SEAL is Linux 6.3+; older kernels reject unknown flags with EINVAL.
  static std::atomic<bool> noexec_supported{true};  // Large creates run on a worker thread.
  if (noexec_supported) {
    int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
    if (fd >= 0 || errno != EINVAL) return fd;
    noexec_supported = false;
  }
  return ::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
}

namespace {

std::uint64_t ReadMeminfoKiB(const std::string& text, const char* key) {
  auto pos = text.find(key);
  if (pos == std::string::npos) return 0;
  return std::strtoull(text.c_str() + pos + std::strlen(key), nullptr, 10);
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

namespace {

Status Reserve(int fd, std::uint64_t offset, std::uint64_t length, std::uint64_t size) {
  int rc;
  do {
    rc = ::fallocate(fd, 0, static_cast<off_t>(offset), static_cast<off_t>(length));
  } while (rc != 0 && errno == EINTR);
  if (rc == 0) return Status::Ok();
  int err = errno;
  return Status::ResourceExhausted("cannot reserve " + std::to_string(size) +
                                   " bytes for the segment: " + std::strerror(err));
}

}  // namespace

Result<SegmentMemory> CreateSegmentMemfd(const std::string& label, std::uint64_t size,
                                         HugePages huge, bool seal_size) {
  UniqueFd fd(MemfdCreate(label));
  if (!fd) {
    int err = errno;
    return PosixError("memfd_create", err);
  }
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    int err = errno;
    if (err == EFBIG || err == ENOSPC || err == ENOMEM) {
      return Status::ResourceExhausted("cannot size a segment of " + std::to_string(size) +
                                       " bytes: " + std::strerror(err));
    }
    return PosixError("ftruncate", err);
  }
  // No F_SEAL_SEAL: sealing a segment (F_SEAL_WRITE) comes later. Only holders of the read-write
  // fd could add seals, and they can change every byte anyway.
  if (seal_size && ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK) != 0) {
    return PosixError("F_ADD_SEALS", errno);
  }
  std::uint64_t huge_bytes = 0;
  if (huge == HugePages::kAuto && size >= kHugePageBytes && HugePagesSupported()) {
    // One page per 2 MiB block, then the collapse: ~10x cheaper than collapsing fully allocated
    // blocks (the kernel would copy every 4 KiB page). The fallocate below reserves the rest.
    for (std::uint64_t off = 0; off + kHugePageBytes <= size; off += kHugePageBytes) {
      if (Status s = Reserve(fd.get(), off, 4096, size); !s.ok()) return s;
    }
    huge_bytes = CollapseToHugePages(fd.get(), size);
  }
  if (size > 0) {
    if (Status s = Reserve(fd.get(), 0, size, size); !s.ok()) return s;
  }
  if (::fchmod(fd.get(), 0600) != 0) return PosixError("fchmod", errno);
  return SegmentMemory{std::move(fd), huge_bytes};
}

Result<UniqueFd> ReopenReadOnly(int fd) {
  std::string path = "/proc/self/fd/" + std::to_string(fd);
  UniqueFd ro(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!ro) {
    int err = errno;
    return PosixError("open " + path, err);
  }
  return ro;
}

std::uint64_t PhysicalMemory() {
  std::uint64_t kib = ReadMeminfoKiB(Slurp("/proc/meminfo"), "MemTotal:");
  return kib != 0 ? kib * 1024 : std::uint64_t{1} << 32;  // Unknowable: assume 4 GiB.
}

namespace {

// This process's cgroup v2 directory ("0::/system.slice/shmbroker.service"), or "".
std::string CgroupDir() {
  std::string cg = Slurp("/proc/self/cgroup");
  if (cg.rfind("0::", 0) != 0) return {};
  std::string rel = cg.substr(3);
  while (!rel.empty() && (rel.back() == '\n' || rel.back() == '\r')) rel.pop_back();
  return "/sys/fs/cgroup" + (rel == "/" ? std::string() : rel);
}

}  // namespace

std::uint64_t AvailableMemory() {
  std::string meminfo = Slurp("/proc/meminfo");
  // Unknowable (e.g. /proc hidden by a sandbox): let fallocate decide.
  if (meminfo.find("MemAvailable:") == std::string::npos) return ~std::uint64_t{0};
  std::uint64_t avail =
      (ReadMeminfoKiB(meminfo, "MemAvailable:") + ReadMeminfoKiB(meminfo, "SwapFree:")) * 1024;
  if (std::string dir = CgroupDir(); !dir.empty()) {
    std::string max = Slurp(dir + "/memory.max");
    std::string cur = Slurp(dir + "/memory.current");
    if (!max.empty() && max.rfind("max", 0) != 0 && !cur.empty()) {
      std::uint64_t m = std::strtoull(max.c_str(), nullptr, 10);
      std::uint64_t c = std::strtoull(cur.c_str(), nullptr, 10);
      std::uint64_t headroom = m > c ? m - c : 0;
      if (headroom < avail) avail = headroom;
    }
  }
  return avail;
}

std::uint64_t MemoryLimit() {
  std::string meminfo = Slurp("/proc/meminfo");
  std::uint64_t total =
      (ReadMeminfoKiB(meminfo, "MemTotal:") + ReadMeminfoKiB(meminfo, "SwapTotal:")) * 1024;
  if (total == 0) total = PhysicalMemory();
  if (std::string dir = CgroupDir(); !dir.empty()) {
    std::string max = Slurp(dir + "/memory.max");
    if (!max.empty() && max.rfind("max", 0) != 0) {
      total = std::min<std::uint64_t>(total, std::strtoull(max.c_str(), nullptr, 10));
    }
  }
  return total;
}

}  // namespace shmbroker::daemon
