// Small segments as blocks of shared regions, through the real daemon: one descriptor per region
// and connection, bytes never shown across segments, read-only access, crashes of every client.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <vector>

#include "test_daemon.h"

namespace shmbroker::testing {
namespace {

bool All(std::span<const std::byte> b, std::byte v) {
  return std::all_of(b.begin(), b.end(), [v](std::byte x) { return x == v; });
}

TEST(SharedRegion, SmallSegmentsShareOneMappingAndNeedNoNewDescriptor) {
  TestDaemon d;
  Client c = d.MustConnect();
  std::vector<Segment> segs;
  std::size_t fds_before = 0;
  for (int i = 0; i < 200; ++i) {
    auto s = c.Create({.name = "small/" + std::to_string(i), .shape = {1000 + 37u * i}});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    if (i == 0) fds_before = OpenFdCount();
    std::memset(s->mutable_bytes().value().data(), i & 0xff, s->size_bytes());
    segs.push_back(std::move(s).value());
  }
  EXPECT_EQ(OpenFdCount(), fds_before) << "no descriptor kept per segment";
  EXPECT_EQ(SegmentMappingCount(), 1u) << "one mapping of the region";
  for (int i = 0; i < 200; ++i) {
    EXPECT_TRUE(All(segs[i].bytes(), std::byte(i & 0xff))) << "segment " << i << " overwritten";
  }
  auto stats = c.Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->segments, 200u);
}

// A holder of an unlinked segment keeps its bytes; its block is reused only once every holder
// let go, and comes back zeroed.
TEST(SharedRegion, AReleasedBlockNeverShowsAnotherSegmentsBytesToAnOldHolder) {
  TestDaemon d;
  Client c = d.MustConnect();
  auto old = c.Create({.name = "reuse/old", .shape = {4096}});
  ASSERT_TRUE(old.ok());
  std::memset(old->mutable_bytes().value().data(), 0x11, 4096);
  const std::byte* where = old->bytes().data();
  ASSERT_TRUE(c.Unlink("reuse/old").ok());
  std::vector<Segment> others;
  for (int i = 0; i < 50; ++i) {
    auto s = c.Create({.name = "reuse/other" + std::to_string(i), .shape = {4096}});
    ASSERT_TRUE(s.ok());
    EXPECT_NE(s->bytes().data(), where) << "a held block was handed out again";
    std::memset(s->mutable_bytes().value().data(), 0x22, 4096);
    others.push_back(std::move(s).value());
  }
  EXPECT_TRUE(All(old->bytes(), std::byte{0x11}));
  // Once released, its block is handed out again, zeroed.
  ASSERT_TRUE(old->Detach().ok());
  bool reused = false;
  for (int i = 0; i < 50 && !reused; ++i) {
    auto s = c.Create({.name = "reuse/new" + std::to_string(i), .shape = {4096}});
    ASSERT_TRUE(s.ok());
    EXPECT_TRUE(All(s->bytes(), std::byte{0})) << "a new segment shows old bytes";
    reused = s->bytes().data() == where;
  }
  EXPECT_TRUE(reused) << "the released block was not reused";
}

TEST(SharedRegion, ReadOnlyAttachesOfAnotherUserMapTheRegionReadOnly) {
  TestDaemon d;
  Client c = d.MustConnect();
  auto pub = c.Create({.name = "ro/public", .shape = {4096}, .mode = 0644});
  auto secret = c.Create({.name = "ro/secret", .shape = {4096}, .mode = 0600});
  ASSERT_TRUE(pub.ok() && secret.ok());
  std::memset(pub->mutable_bytes().value().data(), 0x33, 4096);
  int rc = RunInChild(
      [&] {
        auto nc = d.Connect("nobody");
        if (!nc.ok()) return 1;
        if (nc->Attach("ro/secret").status().code() != Code::kPermissionDenied) return 2;
        if (nc->Attach("ro/public", Access::kReadWrite).status().code() !=
            Code::kPermissionDenied) {
          return 3;
        }
        auto s = nc->Attach("ro/public");
        if (!s.ok() || !All(s->bytes(), std::byte{0x33})) return 4;
        // The mapping itself is read-only: making it writable fails.
        auto page = reinterpret_cast<std::uintptr_t>(s->bytes().data()) & ~std::uintptr_t{4095};
        if (::mprotect(reinterpret_cast<void*>(page), 4096, PROT_READ | PROT_WRITE) == 0) {
          return 5;
        }
        ::signal(SIGSEGV, SIG_DFL);  // Not a sanitizer's handler: let the kernel's signal show.
        const_cast<std::byte*>(s->bytes().data())[0] = std::byte{1};  // Must fault.
        return 6;
      },
      kNobody);
  EXPECT_EQ(rc, 128 + SIGSEGV);
  EXPECT_TRUE(All(pub->bytes(), std::byte{0x33}));
}

// Every client of a region dies by SIGKILL: segments it kept are intact, what only they held is
// freed, and the region serves new clients.
TEST(SharedRegion, EveryClientOfARegionCrashing) {
  TestDaemon d;
  std::vector<std::unique_ptr<HoldingChild>> children;
  for (int k = 0; k < 4; ++k) {
    children.push_back(std::make_unique<HoldingChild>([&, k](auto ready) {
      auto c = d.Connect("crasher");
      if (!c.ok()) return 2;
      static std::vector<Segment> held;
      for (int i = 0; i < 20; ++i) {
        std::string name = "crash/" + std::to_string(k) + "/" + std::to_string(i);
        auto s = c->Create({.name = name, .shape = {8192}});
        if (!s.ok()) return 3;
        std::memset(s->mutable_bytes().value().data(), 0x40 + k, 8192);
        if (i % 2 == 1 && !c->Unlink(name).ok()) return 4;  // Held, unlinked.
        held.push_back(std::move(s).value());
      }
      ready();
      return 0;
    }));
    ASSERT_TRUE(children.back()->ready());
  }
  Client c = d.MustConnect();
  auto stats = c.Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->segments, 40u);
  EXPECT_EQ(stats->unlinked_segments, 40u);
  for (auto& child : children) ASSERT_TRUE(child->Kill());
  ASSERT_TRUE(Eventually([&] {
    auto s = c.Stats();
    return s.ok() && s->unlinked_segments == 0 && s->clients == 1;
  }));
  EXPECT_EQ(c.Stats()->bytes_held, 40u * 8192);
  for (int k = 0; k < 4; ++k) {
    for (int i = 0; i < 20; i += 2) {
      auto s = c.Attach("crash/" + std::to_string(k) + "/" + std::to_string(i));
      ASSERT_TRUE(s.ok());
      EXPECT_TRUE(All(s->bytes(), std::byte(0x40 + k)));
    }
  }
  for (int i = 0; i < 40; ++i) {
    auto s = c.Create({.name = "after/" + std::to_string(i), .shape = {8192}});
    ASSERT_TRUE(s.ok());
    EXPECT_TRUE(All(s->bytes(), std::byte{0}));
  }
}

}  // namespace
}  // namespace shmbroker::testing
