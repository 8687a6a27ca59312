// Trust of the socket path, from both ends: the daemon binds only in a directory no other user can
// change, and a client talks only to a daemon it has reason to trust. The other user is nobody.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "common/posix.h"
#include "common/unique_fd.h"
#include "test_daemon.h"

namespace shmbroker::testing {
namespace {

namespace fs = std::filesystem;

// A directory like /tmp (root's, 1777) in which nobody can plant things, removed at the end.
class StickyDir {
 public:
  StickyDir() {
    char tmpl[] = "/tmp/shmbroker-trust-XXXXXX";
    path_ = ::mkdtemp(tmpl);
    ::chmod(path_.c_str(), 01777);
  }
  ~StickyDir() { fs::remove_all(path_); }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 ? st.st_mode & 07777 : 0;
}

// The daemon on `socket` must refuse to start (exit 1), saying each of `says`.
void ExpectRefusal(const std::string& socket, const std::vector<std::string>& says) {
  TestDaemon d({.args = {"--socket", socket, "--log-level", "warn"},
                .only_args = true,
                .wait_until_serving = false});
  EXPECT_EQ(d.Wait(), 1) << d.log();
  for (const auto& s : says) EXPECT_NE(d.log().find(s), std::string::npos) << s << "\n" << d.log();
}

TEST(SocketDirectory, ADirectoryAnotherUserPreCreatedIsRefused) {
  StickyDir tmp;
  std::string dir = tmp / "shmbroker-0";
  ASSERT_EQ(RunInChild(
                [&] {
                  return ::mkdir(dir.c_str(), 0777) == 0 && ::chmod(dir.c_str(), 0777) == 0 ? 0 : 1;
                },
                kNobody),
            0);
  ExpectRefusal(dir + "/shmbroker.sock", {dir, "65534 (nobody)", "0777", "--socket"});
  EXPECT_EQ(::access((dir + "/shmbroker.sock").c_str(), F_OK), -1);
}

TEST(SocketDirectory, ASymlinkPlantedAsTheDirectoryIsNotFollowed) {
  StickyDir tmp;
  std::string target = tmp / "attacker";
  std::string dir = tmp / "shmbroker-0";
  ASSERT_EQ(RunInChild(
                [&] {
                  return ::mkdir(target.c_str(), 0700) == 0 &&
                                 ::symlink(target.c_str(), dir.c_str()) == 0
                             ? 0
                             : 1;
                },
                kNobody),
            0);
  ExpectRefusal(dir + "/shmbroker.sock", {dir, "symbolic link"});
  EXPECT_EQ(::access((target + "/shmbroker.sock").c_str(), F_OK), -1);
}

TEST(SocketDirectory, AGroupWritableDirectoryIsRefusedEvenIfRootOwnsIt) {
  StickyDir tmp;
  std::string dir = tmp / "shared";
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 0775), 0);
  ExpectRefusal(dir + "/s.sock", {dir, "0775"});
  EXPECT_EQ(::access((dir + "/s.sock").c_str(), F_OK), -1);
}

TEST(SocketDirectory, AStaleSocketOfAnotherUserIsLeftAlone) {
  StickyDir tmp;
  std::string dir = tmp / "d";
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  std::string socket = dir + "/s.sock";
  {
    UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET, 0));
    auto addr = MakeUnixAddress(socket);
    ASSERT_EQ(::bind(fd.get(), addr->get(), addr->length), 0);
  }  // Closed: nobody answers, as after a crash.
  ASSERT_EQ(::chown(socket.c_str(), kNobody, kNobody), 0);
  ExpectRefusal(socket, {"stale socket of uid 65534 (nobody)"});
  struct stat st {};
  ASSERT_EQ(::lstat(socket.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, static_cast<uid_t>(kNobody));
}

TEST(SocketDirectory, CreatedWithTheRightModesWhateverTheUmask) {
  StickyDir tmp;
  std::string dir = tmp / "new/sub";
  mode_t old = ::umask(077);
  {
    TestDaemon d({.args = {"--socket", dir + "/s.sock", "--log-level", "warn"},
                  .only_args = true,
                  .wait_until_serving = false});
    ::umask(old);
    ASSERT_TRUE(Eventually([&] { return d.ConnectWithin(dir + "/s.sock").ok(); }));
    // Root's daemon serves every user: its directory can be entered and its socket connected to.
    EXPECT_EQ(ModeOf(dir), 0755u);
    EXPECT_EQ(ModeOf(dir + "/s.sock"), 0666u);
  }
  ::umask(old);
  // A user's own daemon keeps its directory to itself.
  std::string own = tmp / "shmbroker-65534";
  TestDaemon d({.args = {"--socket", own + "/s.sock", "--log-level", "warn"},
                .only_args = true,
                .wait_until_serving = false,
                .uid = kNobody});
  ASSERT_TRUE(Eventually([&] { return ModeOf(own + "/s.sock") != 0 || !d.alive(); })) << d.log();
  EXPECT_EQ(ModeOf(own), 0700u);
  EXPECT_EQ(ModeOf(own + "/s.sock"), 0666u);
  struct stat st {};
  ASSERT_EQ(::stat(own.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, static_cast<uid_t>(kNobody));
}

// Sets an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { ::setenv(name, value, 1); }
  ~ScopedEnv() { ::unsetenv(name_); }

 private:
  const char* name_;
};

TEST(ClientTrust, ADaemonRunByAnotherUserIsRefused) {
  TestDaemon fake(DaemonOptions{.uid = kNobody});
  ASSERT_TRUE(fake.Connect().ok());  // The fixture trusts it explicitly.
  auto c = Client::Connect({.socket_path = fake.socket()});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kUnavailable);
  for (std::string says :
       {fake.socket(), std::string("65534 (nobody)"), std::string("SHMBROKER_TRUST_UID")}) {
    EXPECT_NE(c.status().message().find(says), std::string::npos) << c.status().ToString();
  }
}

TEST(ClientTrust, TheOverrideNamesTheTrustedUser) {
  TestDaemon other(DaemonOptions{.uid = kNobody});
  {
    ScopedEnv trust("SHMBROKER_TRUST_UID", "nobody");
    auto c = Client::Connect({.socket_path = other.socket()});
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_TRUE(c->Create({.name = "cross-user", .shape = {8}}).ok());
  }
  {
    ScopedEnv trust("SHMBROKER_TRUST_UID", "65534");
    EXPECT_TRUE(Client::Connect({.socket_path = other.socket()}).ok());
  }
  {
    ScopedEnv trust("SHMBROKER_TRUST_UID", "no such user here");
    auto c = Client::Connect({.socket_path = other.socket()});
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), Code::kInvalidArgument) << c.status().ToString();
  }
  // Trusting another uid does not trust this one.
  EXPECT_FALSE(Client::Connect({.socket_path = other.socket(), .trusted_uid = 1}).ok());
}

TEST(ClientTrust, AnotherUserTrustsRootsDaemon) {
  TestDaemon d;
  EXPECT_EQ(RunInChild([&] { return d.Connect().ok() ? 0 : 1; }, kNobody), 0);
}

TEST(ClientTrust, AServiceUsersDaemonIsTrustedBehindSocketActivation) {
  // As systemd's socket unit for a DynamicUser= service: root binds and listens in a root-only
  // directory and hands the socket to the daemon, which runs as another uid. SO_PEERCRED names
  // whoever called listen(): root.
  StickyDir tmp;
  std::string dir = tmp / "run";
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  std::string path = dir + "/s.sock";
  UniqueFd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  auto addr = MakeUnixAddress(path);
  ASSERT_EQ(::bind(listener.get(), addr->get(), addr->length), 0);
  ASSERT_EQ(::chmod(path.c_str(), 0666), 0);
  ASSERT_EQ(::listen(listener.get(), 16), 0);
  TestDaemon service({.only_args = true,
                      .wait_until_serving = false,
                      .uid = kNobody,
                      .listen_fd = listener.get()});
  auto c = service.ConnectWithin(path);
  ASSERT_TRUE(c.ok()) << c.status().ToString() << "\n" << service.log();
  EXPECT_TRUE(c->Create({.name = "via-socket-unit", .shape = {8}}).ok());
}

TEST(ClientTrust, AnotherUsersSocketIsTrustedOnlyInADirectoryNoOneElseCanWrite) {
  // The daemon (nobody) bound its own socket; then root took its directory over: only root can
  // have left the socket there.
  TestDaemon other(DaemonOptions{.uid = kNobody});
  EXPECT_FALSE(Client::Connect({.socket_path = other.socket()}).ok());
  ASSERT_EQ(::chown(other.dir().c_str(), 0, 0), 0);
  auto c = Client::Connect({.socket_path = other.socket()});
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(::chmod(other.dir().c_str(), 0777), 0);
  EXPECT_FALSE(Client::Connect({.socket_path = other.socket()}).ok());
  ASSERT_EQ(::chmod(other.dir().c_str(), 0755), 0);
}

// Any user may take a plain name first; ~USER/ names are USER's, and a consumer can insist on
// the owner it expects.
TEST(Namespace, OnlyTheUserOrRootCreatesUnderTildeUser) {
  TestDaemon d;
  EXPECT_EQ(RunInChild(
                [&] {
                  auto c = d.Connect("squatter");
                  if (!c.ok()) return 10;
                  Code squat = c->Create({.name = "~root/weights", .shape = {8}}).status().code();
                  if (squat != Code::kPermissionDenied) return 11;
                  if (!c->Create({.name = "~nobody/mine", .shape = {8}}).ok()) return 12;
                  // A plain name anyone may take: the squat the owner check below catches.
                  return c->Create({.name = "prod/weights", .shape = {8}, .mode = 0644}).ok() ? 0
                                                                                              : 13;
                },
                kNobody),
            0);
  Client root = d.MustConnect();
  EXPECT_TRUE(root.Create({.name = "~root/weights", .shape = {8}}).ok());
  EXPECT_TRUE(root.Create({.name = "~nobody/for-nobody", .shape = {8}}).ok());
  auto taken = root.Attach("prod/weights", AttachOptions{.owner_uid = 0});
  EXPECT_EQ(taken.status().code(), Code::kPermissionDenied);
  EXPECT_NE(taken.status().message().find("owned by uid 65534"), std::string::npos)
      << taken.status().message();
  EXPECT_TRUE(root.Attach("prod/weights", AttachOptions{.owner_uid = kNobody}).ok());
  EXPECT_TRUE(root.Attach("~root/weights", AttachOptions{.owner_uid = 0}).ok());
}

}  // namespace
}  // namespace shmbroker::testing
