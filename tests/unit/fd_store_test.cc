// The fd store's restore of what an older daemon stored: one metadata memfd per segment
// (meta-<id>). Upgrading shmbroker under systemd with live segments restarts the new daemon on
// those: it must serve them and move their metadata into its journal, in that order.
#include "fd_store.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "journal.h"
#include "memfd.h"
#include "store.pb.h"
#include "systemd.h"

namespace shmbroker::daemon {
namespace {

// A notify socket this test reads, as systemd would.
class Manager {
 public:
  Manager() {
    address_ = "shmbroker-unit-" + std::to_string(::getpid());
    sock_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path + 1, address_.data(), address_.size());
    EXPECT_EQ(::bind(sock_.get(), reinterpret_cast<sockaddr*>(&a),
                     offsetof(sockaddr_un, sun_path) + 1 + address_.size()),
              0);
    ::setenv("NOTIFY_SOCKET", ("@" + address_).c_str(), 1);
    notifier_ = Notifier::FromEnvironment();
    ::unsetenv("NOTIFY_SOCKET");
  }

  Notifier& notifier() { return *notifier_; }

  // The messages sent so far, with the fd of each FDSTORE.
  std::vector<std::pair<std::string, UniqueFd>> Messages() {
    std::vector<std::pair<std::string, UniqueFd>> out;
    std::vector<std::byte> buf(4096);
    for (;;) {
      wire::RecvResult r = wire::RecvPacket(sock_.get(), buf, true);
      if (r.status != wire::RecvStatus::kOk) break;
      UniqueFd fd = r.fds.empty() ? UniqueFd() : std::move(r.fds[0]);
      out.emplace_back(std::string(reinterpret_cast<char*>(buf.data()), r.size), std::move(fd));
    }
    return out;
  }

 private:
  std::string address_;
  UniqueFd sock_;
  std::unique_ptr<Notifier> notifier_;
};

UniqueFd LegacyMeta(std::uint64_t id, const std::string& name, std::uint64_t nbytes) {
  store::StoredSegment s;
  s.set_format(1);
  s.set_id(id);
  auto* info = s.mutable_info();
  info->set_name(name);
  info->set_dtype("|u1");
  info->add_shape(nbytes);
  info->set_nbytes(nbytes);
  info->set_uid(1000);
  info->set_gid(100);
  info->set_mode(0600);
  info->set_created_unix_ns(1'700'000'000'000'000'000);
  std::string bytes = s.SerializeAsString();
  UniqueFd fd(MemfdCreate("shmbroker-meta:" + name));
  EXPECT_EQ(::write(fd.get(), bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  return fd;
}

TEST(FdStore, AnOlderDaemonsSegmentsMoveIntoTheJournal) {
  spdlog::set_level(spdlog::level::off);
  Manager manager;
  constexpr std::uint64_t kBytes = 3 << 20;  // A region of its own.
  auto data = CreateSegmentMemfd("shmbroker:legacy", kBytes);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  ASSERT_EQ(::pwrite(data->fd.get(), "old", 3, 0), 3);
  std::vector<ListenFd> fds;
  fds.push_back({std::move(data->fd), "seg-5"});
  fds.push_back({LegacyMeta(5, "legacy/a", kBytes), "meta-5"});
  fds.push_back({LegacyMeta(6, "legacy/lost", 64), "meta-6"});  // Its memory is gone.

  FdStore store(manager.notifier());
  RegistryOptions opts;
  opts.on_created = [&](const SegmentEntry& s) { store.Added(s); };
  opts.on_removed = [&](const SegmentEntry& s) { store.Removed(s); };
  Registry registry(opts);
  EXPECT_EQ(store.Restore(fds, registry), 1u);
  auto seg = registry.Find("legacy/a");
  ASSERT_TRUE(seg.ok());
  EXPECT_EQ((*seg)->nbytes(), kBytes);
  EXPECT_FALSE(registry.Find("legacy/lost").ok());
  EXPECT_EQ(store.generation(), 1u);

  // The new journal reaches the manager before the entries it replaces leave.
  auto messages = manager.Messages();
  std::vector<std::string> states;
  for (const auto& [state, fd] : messages) states.push_back(state);
  auto at = [&](const std::string& s) {
    return std::find(states.begin(), states.end(), s) - states.begin();
  };
  ASSERT_LT(at("FDSTORE=1\nFDNAME=journal-1"), static_cast<long>(states.size()));
  EXPECT_LT(at("FDSTORE=1\nFDNAME=journal-1"), at("FDSTOREREMOVE=1\nFDNAME=meta-5"));
  EXPECT_LT(at("FDSTORE=1\nFDNAME=journal-1"), at("FDSTOREREMOVE=1\nFDNAME=meta-6"));
  EXPECT_EQ(at("FDSTOREREMOVE=1\nFDNAME=seg-5"), static_cast<long>(states.size()));
  const UniqueFd& journal = messages[at("FDSTORE=1\nFDNAME=journal-1")].second;
  ASSERT_TRUE(journal);
  auto contents = Journal::Read(journal.get());
  ASSERT_TRUE(contents.ok());
  ASSERT_EQ(contents->live.size(), 1u);
  store::StoredSegment stored;
  ASSERT_TRUE(stored.ParseFromString(contents->live.at(5)));
  EXPECT_EQ(stored.info().name(), "legacy/a");
  EXPECT_EQ(stored.info().nbytes(), kBytes);

  // What the daemon does next lands in the journal systemd holds (the same file): an unlink.
  ASSERT_TRUE(registry.Unlink("legacy/a", Credentials{0, 0, 1, {}}).ok());
  contents = Journal::Read(journal.get());
  ASSERT_TRUE(contents.ok());
  EXPECT_TRUE(contents->live.empty());
  messages = manager.Messages();
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_EQ(messages[0].first, "FDSTOREREMOVE=1\nFDNAME=seg-5");
}

// Found by review: metadata cost its owner nothing, so one user's zero-byte segments with large
// attrs grew the journal past the 4 GiB a restart reads, and every user's segments were lost.
// The live records are held to a cap (one user to a quarter), so the journal, at most twice them
// before a rewrite, stays readable.
TEST(FdStore, SegmentMetadataInTheJournalIsCappedPerUser) {
  spdlog::set_level(spdlog::level::off);
  Manager manager;
  FdStore store(manager.notifier());
  RegistryOptions opts;
  opts.on_created = [&](const SegmentEntry& s) { store.Added(s); };
  opts.on_removed = [&](const SegmentEntry& s) { store.Removed(s); };
  Registry registry(opts);
  std::vector<ListenFd> none;
  store.Restore(none, registry);
  store.set_max_live_bytes(400 << 10);
  const Credentials hostile{65534, 65534, 1, {}};
  const std::string attr(1000, 'x');
  int made = 0;
  for (; made < 1000; ++made) {
    if (!store.MayStore(hostile.uid, 1, 1200).ok()) break;
    SegmentSpec spec;
    spec.name = "meta/" + std::to_string(made);
    spec.dtype = "|u1";
    spec.shape = {0};
    spec.attrs = {{"a", attr}};
    ASSERT_TRUE(registry.Create(std::move(spec), hostile, 1).ok()) << made;
  }
  // A quarter of 400 KiB in records of about 1.1 KiB.
  EXPECT_GT(made, 60);
  EXPECT_LT(made, 100);
  Status refused = store.MayStore(hostile.uid, 1, 1200);
  EXPECT_EQ(refused.code(), Code::kResourceExhausted);
  EXPECT_NE(refused.message().find("the most one user may"), std::string::npos)
      << refused.message();
  EXPECT_TRUE(store.MayStore(1000, 1, 1200).ok()) << "another user is refused too";
  // Unlinks give the room back.
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(registry.Unlink("meta/" + std::to_string(i), hostile).ok());
  }
  EXPECT_TRUE(store.MayStore(hostile.uid, 1, 1200).ok());
}

}  // namespace
}  // namespace shmbroker::daemon
