// Large segments on 2 MiB pages (--huge-pages), through the real daemon and the C++ client.
#include <gtest/gtest.h>
#include <sys/utsname.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "test_daemon.h"

namespace shmbroker::testing {
namespace {

// MADV_COLLAPSE needs Linux 6.1, and shmem_enabled must not be "deny".
bool KernelCanCollapse() {
  utsname u{};
  int major = 0, minor = 0;
  if (::uname(&u) != 0 || std::sscanf(u.release, "%d.%d", &major, &minor) != 2) return false;
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string setting((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return (major > 6 || (major == 6 && minor >= 1)) && setting.find("[deny]") == std::string::npos;
}

// Bytes of the mapping at `addr` that the kernel maps with 2 MiB entries.
std::size_t PmdMapped(const void* addr) { return MappingSmapsBytes(addr, "ShmemPmdMapped:"); }

TEST(HugePages, LargeSegmentsAreOnTwoMiBPagesMappedAligned) {
  if (!KernelCanCollapse()) GTEST_SKIP() << "this kernel cannot collapse shmem to 2 MiB pages";
  TestDaemon d;
  Client c = d.MustConnect();
  constexpr std::uint64_t kSize = (8 << 20) + 4096;  // The 4 KiB tail stays on small pages.
  auto seg = c.Create({.name = "huge/a", .shape = {kSize}});
  ASSERT_TRUE(seg.ok()) << seg.status().ToString();
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(seg->bytes().data()) % (2 << 20), 0u);
  std::memset(seg->mutable_bytes().value().data(), 0x5c, kSize);
  EXPECT_EQ(c.Stats()->huge_page_bytes, 8u << 20);
  auto reader = c.Attach("huge/a");
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(reader->bytes().data()) % (2 << 20), 0u);
  std::size_t sum = 0;
  for (std::byte b : reader->bytes()) sum += std::to_integer<unsigned>(b);
  EXPECT_EQ(sum, 0x5cu * kSize);
  EXPECT_EQ(PmdMapped(reader->bytes().data()), 8u << 20) << "the reader maps 2 MiB pages";
  // Small segments stay on 4 KiB pages in their shared regions.
  ASSERT_TRUE(c.Create({.name = "huge/small", .shape = {64 << 10}}).ok());
  EXPECT_EQ(c.Stats()->huge_page_bytes, 8u << 20);
  reader = Status::NotFound("released");
  seg = Status::NotFound("released");
  ASSERT_TRUE(c.Unlink("huge/a").ok());
  EXPECT_TRUE(Eventually([&] { return c.Stats()->huge_page_bytes == 0; }));
}

TEST(HugePages, NeverMeansSmallPagesOnly) {
  TestDaemon d(DaemonOptions{.args = {"--huge-pages", "never"}});
  Client c = d.MustConnect();
  auto seg = c.Create({.name = "small-pages", .shape = {8 << 20}});
  ASSERT_TRUE(seg.ok());
  std::memset(seg->mutable_bytes().value().data(), 1, 8 << 20);
  EXPECT_EQ(c.Stats()->huge_page_bytes, 0u);
  EXPECT_EQ(PmdMapped(seg->bytes().data()), 0u);
}

}  // namespace
}  // namespace shmbroker::testing
