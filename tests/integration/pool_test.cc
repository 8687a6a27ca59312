// The warm pool (--warm-pool, --prealloc, trim) through the real daemon: memory is reused only
// by creates of the same class, only once released, zeroed, never when sealed, and counted
// against --max-memory.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include "test_daemon.h"

namespace shmbroker::testing {
namespace {

constexpr std::uint64_t kSize = 8 << 20;

// The inode of the file mapped at `addr` in this process (0 if none): the same inode is the
// same memfd.
std::uint64_t MappingInode(const void* addr) {
  std::ifstream maps("/proc/self/maps");
  auto a = reinterpret_cast<std::uintptr_t>(addr);
  for (std::string line; std::getline(maps, line);) {
    std::istringstream in(line);
    std::string range, perms, offset, dev;
    std::uint64_t inode = 0;
    in >> range >> perms >> offset >> dev >> inode;
    std::uintptr_t lo = std::stoull(range.substr(0, range.find('-')), nullptr, 16);
    std::uintptr_t hi = std::stoull(range.substr(range.find('-') + 1), nullptr, 16);
    if (a >= lo && a < hi) return inode;
  }
  return 0;
}

bool AllZero(std::span<const std::byte> bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](std::byte b) { return b == std::byte{0}; });
}

DaemonStats Stats(Client& c) {
  auto s = c.Stats();
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? *s : DaemonStats{};
}

// Creates `name` (kSize bytes, `mode`), fills it with 0xab, releases and unlinks it, and waits
// until the pool holds `pooled` memfds. Returns the memfd's inode.
std::uint64_t CreateFillRelease(Client& c, const std::string& name, std::uint32_t mode,
                                std::uint64_t pooled) {
  std::uint64_t inode = 0;
  {
    auto seg = c.Create({.name = name, .shape = {kSize}, .mode = mode});
    EXPECT_TRUE(seg.ok()) << seg.status().ToString();
    if (!seg.ok()) return 0;
    std::memset(seg->mutable_bytes().value().data(), 0xab, kSize);
    inode = MappingInode(seg->bytes().data());
    EXPECT_TRUE(c.Unlink(name).ok());
  }
  EXPECT_TRUE(Eventually([&] { return Stats(c).pool_segments == pooled; }))
      << "pool_segments " << Stats(c).pool_segments << ", want " << pooled;
  return inode;
}

TEST(WarmPool, ReleasedMemoryGoesZeroedToTheNextCreateOfItsClass) {
  TestDaemon d({"--warm-pool", "64M"});
  Client c = d.MustConnect();
  EXPECT_EQ(Stats(c).pool_max_bytes, 64u << 20);
  std::uint64_t inode = CreateFillRelease(c, "pool/a", 0600, 1);
  ASSERT_NE(inode, 0u);
  DaemonStats s = Stats(c);
  EXPECT_EQ(s.pool_bytes, kSize);
  EXPECT_EQ(s.bytes_held, 0u) << "pool memory is not charged to anyone";

  auto b = c.Create({.name = "pool/b", .shape = {kSize}});
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(MappingInode(b->bytes().data()), inode) << "the same memfd, reused";
  EXPECT_TRUE(AllZero(b->bytes())) << "reused memory must read as zeros";
  s = Stats(c);
  EXPECT_EQ(s.pool_reused, 1u);
  EXPECT_EQ(s.pool_segments, 0u);
  EXPECT_EQ(s.bytes_held, kSize);

  // Back in the pool; another size does not fit a used memfd (sealed against resizing).
  b = Status::NotFound("released");
  ASSERT_TRUE(c.Unlink("pool/b").ok());
  ASSERT_TRUE(Eventually([&] { return Stats(c).pool_segments == 1; }));
  auto other = c.Create({.name = "pool/c", .shape = {kSize + 4096}});
  ASSERT_TRUE(other.ok());
  EXPECT_NE(MappingInode(other->bytes().data()), inode);
  s = Stats(c);
  EXPECT_EQ(s.pool_reused, 1u);
  EXPECT_EQ(s.pool_segments, 1u);
}

// MADV_COLLAPSE needs Linux 6.1, and shmem_enabled must not be "deny" (as huge_page_test.cc).
bool KernelCanCollapse() {
  int major = 0, minor = 0;
  std::ifstream rel("/proc/sys/kernel/osrelease");
  char dot = 0;
  rel >> major >> dot >> minor;
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string setting((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return (major > 6 || (major == 6 && minor >= 1)) && setting.find("[deny]") == std::string::npos;
}

TEST(WarmPool, ReusedMemoryKeepsItsTwoMiBPages) {
  if (!KernelCanCollapse()) GTEST_SKIP() << "this kernel cannot collapse shmem to 2 MiB pages";
  TestDaemon d({"--warm-pool", "64M"});
  Client c = d.MustConnect();
  constexpr std::uint64_t kOdd = kSize + 100;  // Not a whole number of pages.
  {
    auto seg = c.Create({.name = "pool/huge", .shape = {kOdd}});
    ASSERT_TRUE(seg.ok());
    std::memset(seg->mutable_bytes().value().data(), 0xcd, kOdd);
    ASSERT_EQ(Stats(c).huge_page_bytes, kSize);
    ASSERT_TRUE(c.Unlink("pool/huge").ok());
  }
  ASSERT_TRUE(Eventually([&] { return Stats(c).pool_segments == 1; }));
  auto again = c.Create({.name = "pool/huge-again", .shape = {kOdd}});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(Stats(c).pool_reused, 1u);
  EXPECT_TRUE(AllZero(again->bytes()));
  EXPECT_EQ(Stats(c).huge_page_bytes, kSize) << "zeroed in place, not punched and reserved again";
  EXPECT_EQ(MappingSmapsBytes(again->bytes().data(), "ShmemPmdMapped:"), kSize);
}

TEST(WarmPool, AnotherClassNeverGetsUsedMemory) {
  TestDaemon d({"--warm-pool", "64M"});
  Client c = d.MustConnect();
  // Mode 0666: readable and writable by all, yet still only for creates of (root, 0666).
  std::uint64_t inode = CreateFillRelease(c, "pool/shared-by-all", 0666, 1);
  ASSERT_NE(inode, 0u);
  int rc = RunInChild(
      [&] {
        auto n = d.Connect("nobody");
        if (!n.ok()) return 1;
        auto seg = n->Create({.name = "pool/nobodys", .shape = {kSize}, .mode = 0666});
        if (!seg.ok()) return 2;
        if (MappingInode(seg->bytes().data()) == inode) return 3;
        return AllZero(seg->bytes()) ? 0 : 4;
      },
      kNobody);
  EXPECT_EQ(rc, 0) << "3: nobody got root's used memfd";
  DaemonStats s = Stats(c);
  EXPECT_EQ(s.pool_reused, 0u);
  // Root's memory is still in the pool (nobody's segment, still named, holds its own).
  EXPECT_EQ(s.pool_segments, 1u);

  // The same owner with another mode is another class too.
  {
    auto seg = c.Create({.name = "pool/root-0600", .shape = {kSize}, .mode = 0600});
    ASSERT_TRUE(seg.ok());
    EXPECT_NE(MappingInode(seg->bytes().data()), inode);
    EXPECT_EQ(Stats(c).pool_reused, 0u);
  }
  auto same = c.Create({.name = "pool/root-0666", .shape = {kSize}, .mode = 0666});
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(MappingInode(same->bytes().data()), inode);
  EXPECT_TRUE(AllZero(same->bytes()));
  EXPECT_EQ(Stats(c).pool_reused, 1u);
}

TEST(WarmPool, NothingIsPooledWhileAttachedOrMapped) {
  TestDaemon d({"--warm-pool", "64M"});
  Client c = d.MustConnect();
  Client reader_client = d.MustConnect("reader");
  {
    auto seg = c.Create({.name = "pool/held", .shape = {kSize}});
    ASSERT_TRUE(seg.ok());
    auto reader = reader_client.Attach("pool/held");
    ASSERT_TRUE(reader.ok());
    ASSERT_TRUE(c.Unlink("pool/held").ok());
    seg = Status::NotFound("released");
    DaemonStats s = Stats(c);
    EXPECT_EQ(s.unlinked_segments, 1u);
    EXPECT_EQ(s.pool_segments, 0u) << "still attached by the reader";
  }  // The reader lets go.
  EXPECT_TRUE(Eventually([&] { return Stats(c).pool_segments == 1; }));

  // A process whose connection closed while it still maps the memory: held until it exits.
  HoldingChild child([&](const std::function<void()>& ready) {
    RawConnection raw(d.socket());
    if (!raw.Hello()) return 1;
    wire::Request req;
    req.mutable_create()->set_name("pool/mapped");
    req.mutable_create()->set_dtype("|u1");
    req.mutable_create()->add_shape(2 * kSize);  // Not the pooled memfd's size.
    std::vector<UniqueFd> fds;
    auto reply = raw.Call(req, &fds);
    if (!reply || reply->code() != wire::OK || fds.size() != 1) return 2;
    void* map = ::mmap(nullptr, 2 * kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0].get(), 0);
    if (map == MAP_FAILED) return 3;
    fds.clear();
    ::shutdown(raw.fd(), SHUT_RDWR);  // The daemon sees the connection close; the mapping stays.
    ready();
    return 0;
  });
  ASSERT_TRUE(child.ready());
  ASSERT_TRUE(Eventually([&] { return Stats(c).clients == 2; })) << "the child's connection";
  ASSERT_TRUE(c.Unlink("pool/mapped").ok());
  DaemonStats s = Stats(c);
  EXPECT_EQ(s.pool_segments, 1u) << "the child still maps pool/mapped";
  EXPECT_EQ(s.unlinked_segments, 1u);
  EXPECT_TRUE(child.Kill());
  EXPECT_TRUE(Eventually([&] { return Stats(c).pool_segments == 2; }));
}

TEST(WarmPool, SealedMemoryIsNeverPooled) {
  TestDaemon d({"--warm-pool", "64M"});
  Client c = d.MustConnect();
  {
    auto seg = c.Create({.name = "pool/sealed", .shape = {kSize}});
    ASSERT_TRUE(seg.ok());
  }
  ASSERT_TRUE(c.Seal("pool/sealed").ok());
  {
    auto r = c.Attach("pool/sealed");
    ASSERT_TRUE(r.ok());
  }
  ASSERT_TRUE(c.Unlink("pool/sealed").ok());
  EXPECT_TRUE(Eventually([&] { return Stats(c).bytes_held == 0; }));
  DaemonStats s = Stats(c);
  EXPECT_EQ(s.pool_segments, 0u);
  EXPECT_EQ(s.pool_bytes, 0u);
}

TEST(WarmPool, PoolCountsAgainstMaxMemoryAndGivesWayToCreates) {
  TestDaemon d({"--max-memory", "20M", "--warm-pool", "16M"});
  Client c = d.MustConnect();
  CreateFillRelease(c, "pool/first", 0600, 1);
  EXPECT_EQ(Stats(c).pool_bytes, kSize);
  // Another class, 16 MiB: held 0 + pool 8 + 16 > 20, so the pool's memory goes first.
  auto big = c.Create({.name = "pool/big", .shape = {16 << 20}, .mode = 0640});
  ASSERT_TRUE(big.ok()) << big.status().ToString();
  DaemonStats s = Stats(c);
  EXPECT_EQ(s.pool_bytes, 0u);
  EXPECT_EQ(s.pool_released_bytes, kSize);
  EXPECT_EQ(s.bytes_held, 16u << 20);
  // The cap itself still holds.
  EXPECT_EQ(c.Create({.name = "pool/too-much", .shape = {kSize}}).status().code(),
            Code::kResourceExhausted);
}

TEST(WarmPool, TrimGivesItBackRootAllOthersTheirOwn) {
  TestDaemon d({"--warm-pool", "64M"});
  Client c = d.MustConnect();
  CreateFillRelease(c, "pool/roots", 0600, 1);
  int rc = RunInChild(
      [&] {
        auto n = d.Connect("nobody");
        if (!n.ok()) return 1;
        auto t = n->Trim();  // Nothing of nobody's: root's memory stays.
        if (!t.ok() || t->bytes_released != 0) return 2;
        {
          auto seg = n->Create({.name = "pool/nobodys", .shape = {kSize}});
          if (!seg.ok() || !n->Unlink("pool/nobodys").ok()) return 3;
        }
        if (!Eventually([&] { return n->Stats()->pool_segments == 2; })) return 4;
        t = n->Trim();
        if (!t.ok() || t->bytes_released != kSize || t->segments_released != 1) return 5;
        return 0;
      },
      kNobody);
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(Stats(c).pool_segments, 1u) << "root's memory is not nobody's to trim";

  std::string cmd = std::string(SHMCTL_PATH) + " --socket " + d.socket() + " trim";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[256] = {};
  std::size_t n = std::fread(buf, 1, sizeof(buf) - 1, p);
  EXPECT_EQ(::pclose(p), 0);
  EXPECT_EQ(std::string(buf, n), "released 8.0 MiB of the warm pool (1 memfd)\n");
  DaemonStats s = Stats(c);
  EXPECT_EQ(s.pool_bytes, 0u);
  EXPECT_EQ(s.pool_segments, 0u);
  EXPECT_EQ(s.pool_released_bytes, 2 * kSize);
}

TEST(WarmPool, PreallocFillsThePoolForAnyone) {
  TestDaemon d({"--prealloc", "32M"});
  Client c = d.MustConnect();
  ASSERT_TRUE(Eventually([&] { return Stats(c).pool_bytes == (32u << 20); }));
  EXPECT_EQ(Stats(c).pool_max_bytes, 32u << 20) << "--prealloc implies --warm-pool";
  // Never handed out: any class may have it, cut to size.
  int rc = RunInChild(
      [&] {
        auto n = d.Connect("nobody");
        if (!n.ok()) return 1;
        auto seg = n->Create({.name = "pool/from-prealloc", .shape = {kSize}});
        if (!seg.ok()) return 2;
        if (!AllZero(seg->bytes())) return 3;
        auto s = n->Stats();
        return s->pool_reused == 1 && s->pool_bytes == 0 ? 0 : 4;
      },
      kNobody);
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(Stats(c).bytes_held, kSize);
}

TEST(WarmPool, BadOptionsAreUsageErrors) {
  for (std::vector<std::string> args : {std::vector<std::string>{"--warm-pool", "lots"},
                                        {"--prealloc", "1K"},
                                        {"--max-memory", "8M", "--warm-pool", "16M"},
                                        {"--max-memory", "8M", "--prealloc", "16M"}}) {
    TestDaemon d(DaemonOptions{.args = args, .wait_until_serving = false});
    EXPECT_EQ(d.Wait(), 2) << args[0] << " " << args[1] << ": " << d.log();
    std::string named = args[args.size() - 2];
    EXPECT_NE(d.log().find(named), std::string::npos) << d.log();
  }
}

}  // namespace
}  // namespace shmbroker::testing
