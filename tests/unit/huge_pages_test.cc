// daemon/huge_pages and common/map_aligned: 2 MiB pages for large segments.
#include "huge_pages.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <utility>

#include "common/map_aligned.h"
#include "common/unique_fd.h"

namespace shmbroker::daemon {
namespace {

constexpr std::size_t kMiB = 1 << 20;

// A memfd of `size` bytes, every page reserved, sealed as the daemon seals segments.
UniqueFd SegmentMemfd(std::size_t size) {
  UniqueFd fd(::memfd_create("huge_pages_test", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  EXPECT_TRUE(fd);
  EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  EXPECT_EQ(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL), 0);
  if (size > 0) {
    EXPECT_EQ(::fallocate(fd.get(), 0, 0, static_cast<off_t>(size)), 0);
  }
  return fd;
}

// The [start, end) of this process's PROT_NONE private mappings (what a leftover reservation
// would be). ASan has many of its own and changes them as it allocates: compare only nearby ones.
using Ranges = std::set<std::pair<std::uintptr_t, std::uintptr_t>>;
Ranges ProtNoneRanges() {
  Ranges out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long start = 0, end = 0;
    char perms[5] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s", &start, &end, perms) == 3 &&
        std::string(perms) == "---p") {
      out.emplace(start, end);
    }
  }
  return out;
}

// Ranges of `after` not in `before` that meet [from, to).
Ranges NewRangesWithin(const Ranges& before, const Ranges& after, std::uintptr_t from,
                       std::uintptr_t to) {
  Ranges out;
  for (const auto& r : after) {
    if (!before.count(r) && r.first < to && r.second > from) out.insert(r);
  }
  return out;
}

// ShmemPmdMapped of the mapping that starts at `addr`, in bytes: how much of it 2 MiB pages map.
std::uint64_t PmdMapped(const void* addr) {
  char prefix[32];
  std::snprintf(prefix, sizeof(prefix), "%lx-", reinterpret_cast<unsigned long>(addr));
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool in_entry = false;
  while (std::getline(smaps, line)) {
    if (line.rfind(prefix, 0) == 0) in_entry = true;
    if (in_entry && line.rfind("ShmemPmdMapped:", 0) == 0) {
      return std::stoull(line.substr(15)) * 1024;
    }
  }
  return 0;
}

TEST(HugePages, ParseHugePages) {
  EXPECT_EQ(*ParseHugePages("auto"), HugePages::kAuto);
  EXPECT_EQ(*ParseHugePages("never"), HugePages::kNever);
  for (const char* bad : {"", "Auto", "always", "never ", "1"}) {
    auto r = ParseHugePages(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find("'auto' or 'never'"), std::string::npos);
  }
}

TEST(MapAligned, AlignedAndSharedWithNoSlackLeft) {
  for (std::size_t size : {2 * kMiB, 5 * kMiB + 123, 8 * kMiB}) {
    UniqueFd fd = SegmentMemfd(size);
    Ranges before = ProtNoneRanges();
    void* a = MapAligned(fd.get(), size, PROT_READ | PROT_WRITE, kHugePageBytes);
    ASSERT_NE(a, MAP_FAILED) << std::strerror(errno);
    auto at = reinterpret_cast<std::uintptr_t>(a);
    EXPECT_EQ(at % kHugePageBytes, 0u) << size;
    // The reservation spanned at most [at - 2 MiB, at + size + 2 MiB).
    EXPECT_TRUE(
        NewRangesWithin(before, ProtNoneRanges(), at - kHugePageBytes, at + size + kHugePageBytes)
            .empty())
        << "part of the reservation was left mapped";
    void* b = MapAligned(fd.get(), size, PROT_READ, kHugePageBytes);
    ASSERT_NE(b, MAP_FAILED);
    static_cast<char*>(a)[0] = 'x';
    static_cast<char*>(a)[size - 1] = 'y';
    EXPECT_EQ(static_cast<char*>(b)[0], 'x');
    EXPECT_EQ(static_cast<char*>(b)[size - 1], 'y');
    EXPECT_EQ(::munmap(a, size), 0);
    EXPECT_EQ(::munmap(b, size), 0);
  }
}

TEST(MapAligned, SmallLengthsAndErrors) {
  UniqueFd fd = SegmentMemfd(4096);
  void* a = MapAligned(fd.get(), 100, PROT_READ | PROT_WRITE, kHugePageBytes);
  ASSERT_NE(a, MAP_FAILED);
  std::memcpy(a, "hello", 5);
  char buf[5];
  ASSERT_EQ(::pread(fd.get(), buf, 5, 0), 5);
  EXPECT_EQ(std::memcmp(buf, "hello", 5), 0);
  EXPECT_EQ(::munmap(a, 100), 0);

  errno = 0;
  EXPECT_EQ(MapAligned(fd.get(), 4096, PROT_READ, 3 * kMiB), MAP_FAILED);
  EXPECT_EQ(errno, EINVAL);
  // A failed mapping leaves nothing behind either: no new mapping of the reservation's odd size.
  constexpr std::size_t length = 4 * kMiB + 12288;
  Ranges before = ProtNoneRanges();
  errno = 0;
  EXPECT_EQ(MapAligned(-1, length, PROT_READ, kHugePageBytes), MAP_FAILED);
  EXPECT_EQ(errno, EBADF);
  for (const auto& r : NewRangesWithin(before, ProtNoneRanges(), 0, UINTPTR_MAX)) {
    EXPECT_NE(r.second - r.first, length + kHugePageBytes) << "the reservation was left mapped";
  }
}

TEST(HugePages, CollapseKeepsDataAndSeals) {
  if (!HugePagesSupported()) GTEST_SKIP() << "MADV_COLLAPSE does not work on a memfd here";
  constexpr std::size_t size = 8 * kMiB;
  UniqueFd fd = SegmentMemfd(size);
  void* w = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  ASSERT_NE(w, MAP_FAILED);
  auto* words = static_cast<std::uint64_t*>(w);
  for (std::size_t i = 0; i < size / 8; ++i) words[i] = i * 0x9E3779B97F4A7C15u;

  EXPECT_EQ(CollapseToHugePages(fd.get(), size), size);

  // The old mapping sees the new pages, and so does a new one.
  for (std::size_t i = 0; i < size / 8; ++i) ASSERT_EQ(words[i], i * 0x9E3779B97F4A7C15u) << i;
  ::munmap(w, size);
  void* r = MapAligned(fd.get(), size, PROT_READ, kHugePageBytes);
  ASSERT_NE(r, MAP_FAILED);
  auto* again = static_cast<const std::uint64_t*>(r);
  for (std::size_t i = 0; i < size / 8; ++i) ASSERT_EQ(again[i], i * 0x9E3779B97F4A7C15u) << i;
  // A reader mapping 2 MiB-aligned gets the huge pages whole.
  EXPECT_EQ(PmdMapped(r), size);
  ::munmap(r, size);

  int seals = ::fcntl(fd.get(), F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL),
            F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
  struct stat st;
  ASSERT_EQ(::fstat(fd.get(), &st), 0);
  EXPECT_EQ(static_cast<std::size_t>(st.st_size), size);
}

TEST(HugePages, CollapseLeavesTheTailBelow2MiB) {
  if (!HugePagesSupported()) GTEST_SKIP() << "MADV_COLLAPSE does not work on a memfd here";
  UniqueFd fd = SegmentMemfd(5 * kMiB + 4096);
  EXPECT_EQ(CollapseToHugePages(fd.get(), 5 * kMiB + 4096), 4 * kMiB);
}

// The fast way for a new segment: one page per 2 MiB block is enough, the holes become zeroes.
TEST(HugePages, CollapseFillsTheHolesOfSeededBlocks) {
  if (!HugePagesSupported()) GTEST_SKIP() << "MADV_COLLAPSE does not work on a memfd here";
  constexpr std::size_t size = 8 * kMiB;
  UniqueFd fd(::memfd_create("huge_pages_test", MFD_CLOEXEC));
  ASSERT_EQ(::ftruncate(fd.get(), size), 0);
  for (std::size_t off = 0; off < size; off += kHugePageBytes) {
    ASSERT_EQ(::fallocate(fd.get(), 0, static_cast<off_t>(off), 4096), 0);
  }
  EXPECT_EQ(CollapseToHugePages(fd.get(), size), size);
  ASSERT_EQ(::fallocate(fd.get(), 0, 0, size), 0);
  struct stat st;
  ASSERT_EQ(::fstat(fd.get(), &st), 0);
  EXPECT_EQ(static_cast<std::size_t>(st.st_blocks) * 512, size);
  void* r = MapAligned(fd.get(), size, PROT_READ, kHugePageBytes);
  ASSERT_NE(r, MAP_FAILED);
  auto* words = static_cast<const std::uint64_t*>(r);
  std::uint64_t any = 0;
  for (std::size_t i = 0; i < size / 8; ++i) any |= words[i];
  EXPECT_EQ(any, 0u);
  ::munmap(r, size);
}

TEST(HugePages, NothingBelow2MiB) {
  UniqueFd fd = SegmentMemfd(kHugePageBytes - 4096);
  EXPECT_EQ(CollapseToHugePages(fd.get(), kHugePageBytes - 4096), 0u);
  EXPECT_EQ(CollapseToHugePages(fd.get(), 0), 0u);
}

TEST(HugePages, FailureIsZeroNotACrash) {
  EXPECT_EQ(CollapseToHugePages(-1, 8 * kMiB), 0u);
  // An fd that cannot be mapped read-write.
  UniqueFd fd = SegmentMemfd(4 * kMiB);
  UniqueFd ro(::open(("/proc/self/fd/" + std::to_string(fd.get())).c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(ro);
  EXPECT_EQ(CollapseToHugePages(ro.get(), 4 * kMiB), 0u);
}

}  // namespace
}  // namespace shmbroker::daemon
