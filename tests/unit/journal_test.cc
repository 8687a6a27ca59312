// The restart journal's format (daemon/journal.h): what is read back is what was appended, and a
// journal torn anywhere by a crash gives exactly the records before the tear.
#include "journal.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

namespace shmbroker::daemon {
namespace {

std::string Contents(int fd) {
  std::string bytes(static_cast<std::size_t>(::lseek(fd, 0, SEEK_END)), '\0');
  EXPECT_EQ(::pread(fd, bytes.data(), bytes.size(), 0), static_cast<ssize_t>(bytes.size()));
  return bytes;
}

UniqueFd WithBytes(const std::string& bytes) {
  UniqueFd fd = Journal::Make();
  EXPECT_EQ(::ftruncate(fd.get(), 0), 0);
  EXPECT_EQ(::pwrite(fd.get(), bytes.data(), bytes.size(), 0), static_cast<ssize_t>(bytes.size()));
  return fd;
}

TEST(Journal, ReadsBackPutsAndDeletesInOrder) {
  UniqueFd fd = Journal::Make();
  ASSERT_TRUE(fd);
  std::uint64_t tail = Journal::kMagic.size();
  for (std::uint64_t id = 1; id <= 5; ++id) {
    ASSERT_TRUE(
        Journal::Append(fd.get(), tail, Journal::EncodePut(id, "v1-" + std::to_string(id))));
  }
  ASSERT_TRUE(Journal::Append(fd.get(), tail, Journal::EncodeDelete(2)));
  ASSERT_TRUE(Journal::Append(fd.get(), tail, Journal::EncodePut(3, "v2-3")));  // A later put wins.
  ASSERT_TRUE(Journal::Append(fd.get(), tail, Journal::EncodeDelete(9)));       // Unknown: nothing.
  ASSERT_TRUE(Journal::Append(fd.get(), tail, Journal::EncodeDelete(5)));
  ASSERT_TRUE(Journal::Append(fd.get(), tail, Journal::EncodePut(5, "v2-5")));  // Back again.
  auto c = Journal::Read(fd.get());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->problem, "");
  EXPECT_EQ(c->end, tail);
  std::map<std::uint64_t, std::string> want{{1, "v1-1"}, {3, "v2-3"}, {4, "v1-4"}, {5, "v2-5"}};
  EXPECT_EQ(c->live, want);
}

TEST(Journal, ATearAnywhereKeepsExactlyTheRecordsBeforeIt) {
  UniqueFd fd = Journal::Make();
  std::uint64_t tail = Journal::kMagic.size();
  ASSERT_TRUE(Journal::Append(fd.get(), tail, Journal::EncodePut(1, "first")));
  std::uint64_t after_first = tail;
  ASSERT_TRUE(Journal::Append(fd.get(), tail, Journal::EncodeDelete(1)));
  std::uint64_t after_delete = tail;
  ASSERT_TRUE(Journal::Append(fd.get(), tail, Journal::EncodePut(2, std::string(300, 'x'))));
  std::string whole = Contents(fd.get());
  for (std::size_t cut = Journal::kMagic.size(); cut <= whole.size(); ++cut) {
    UniqueFd torn = WithBytes(whole.substr(0, cut));
    auto c = Journal::Read(torn.get());
    ASSERT_TRUE(c.ok()) << cut;
    std::map<std::uint64_t, std::string> want;
    if (cut >= after_first && cut < after_delete) want[1] = "first";
    if (cut == whole.size()) want[2] = std::string(300, 'x');
    EXPECT_EQ(c->live, want) << "cut at " << cut;
    bool at_boundary = cut == Journal::kMagic.size() || cut == after_first || cut == after_delete ||
                       cut == whole.size();
    EXPECT_EQ(c->problem.empty(), at_boundary) << "cut at " << cut << ": " << c->problem;
  }
}

TEST(Journal, AFlippedBitEndsTheJournalThere) {
  UniqueFd fd = Journal::Make();
  std::uint64_t tail = Journal::kMagic.size();
  ASSERT_TRUE(Journal::Append(fd.get(), tail, Journal::EncodePut(1, "one")));
  std::uint64_t second = tail;
  ASSERT_TRUE(Journal::Append(fd.get(), tail, Journal::EncodePut(2, "two")));
  ASSERT_TRUE(Journal::Append(fd.get(), tail, Journal::EncodePut(3, "three")));
  std::string whole = Contents(fd.get());
  for (std::size_t at = second; at < second + Journal::EncodePut(2, "two").size(); ++at) {
    std::string bad = whole;
    bad[at] = static_cast<char>(bad[at] ^ 0x10);
    UniqueFd f = WithBytes(bad);
    auto c = Journal::Read(f.get());
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(c->live, (std::map<std::uint64_t, std::string>{{1, "one"}})) << "byte " << at;
    EXPECT_FALSE(c->problem.empty());
    EXPECT_EQ(c->end, second);
  }
}

TEST(Journal, AnAppendAfterATornOneOverwritesIt) {
  UniqueFd fd = Journal::Make();
  std::uint64_t tail = Journal::kMagic.size();
  ASSERT_TRUE(Journal::Append(fd.get(), tail, Journal::EncodePut(1, "one")));
  // A failed write left half a record (Append keeps the tail where it was).
  std::string half = Journal::EncodePut(2, "a long record that was cut").substr(0, 12);
  ASSERT_EQ(::pwrite(fd.get(), half.data(), half.size(), static_cast<off_t>(tail)), 12);
  ASSERT_TRUE(Journal::Append(fd.get(), tail, Journal::EncodePut(3, "three")));
  auto c = Journal::Read(fd.get());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->live, (std::map<std::uint64_t, std::string>{{1, "one"}, {3, "three"}}));
  EXPECT_EQ(c->problem, "");
}

TEST(Journal, WhatIsNotAJournalIsRefused) {
  for (std::string bytes : {std::string(), std::string("shmbjr"), std::string("garbage!1234"),
                            std::string("SHMBJRN1")}) {
    UniqueFd fd = WithBytes(bytes);
    EXPECT_FALSE(Journal::Read(fd.get()).ok()) << bytes;
  }
  UniqueFd big = Journal::Make();
  ASSERT_EQ(::ftruncate(big.get(), 1 << 20), 0);
  EXPECT_FALSE(Journal::Read(big.get(), 4096).ok());
  // Unknown kinds and absurd lengths end the journal instead of being trusted.
  std::string unknown = std::string(Journal::kMagic) + Journal::EncodePut(1, "x");
  unknown[Journal::kMagic.size() + 8] = 7;
  UniqueFd u = WithBytes(unknown);
  auto c = Journal::Read(u.get());
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->live.empty());
  EXPECT_FALSE(c->problem.empty());
}

}  // namespace
}  // namespace shmbroker::daemon
