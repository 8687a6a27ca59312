// common/: socket path resolution and the POSIX helpers every part of shmbroker shares.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/posix.h"
#include "common/socket_path.h"

namespace shmbroker {
namespace {

// The branches for other users (as root, they run in a child dropped to nobody). `present` is a
// socket standing in for the system service's, `absent` a path with nothing there.
void ExpectNonRootResolution(const std::string& absent, const std::string& present) {
  ::setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
  EXPECT_EQ(ResolveSocketPath("", absent), "/run/user/1000/shmbroker/shmbroker.sock");
  // The system service's socket comes first when there is one...
  EXPECT_EQ(ResolveSocketPath("", present), present);
  // ...but a user's own daemon never takes that path.
  EXPECT_EQ(ResolveDaemonSocketPath(""), "/run/user/1000/shmbroker/shmbroker.sock");
  ::unsetenv("XDG_RUNTIME_DIR");
  std::string tmp = "/tmp/shmbroker-" + std::to_string(::geteuid()) + "/shmbroker.sock";
  EXPECT_EQ(ResolveSocketPath("", absent), tmp);
  EXPECT_EQ(ResolveDaemonSocketPath(""), tmp);
}

TEST(SocketPath, ResolutionOrder) {
  char tmpl[] = "/tmp/shmbroker-resolve-XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  ::chmod(dir.c_str(), 0755);
  std::string present = dir + "/system.sock", absent = dir + "/none.sock";
  UniqueFd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  auto addr = MakeUnixAddress(present);
  ASSERT_EQ(::bind(listener.get(), addr->get(), addr->length), 0);

  EXPECT_EQ(ResolveSocketPath("/x/y.sock"), "/x/y.sock");
  ::setenv("SHMBROKER_SOCKET", "/env/s.sock", 1);
  EXPECT_EQ(ResolveSocketPath(""), "/env/s.sock");
  EXPECT_EQ(ResolveDaemonSocketPath(""), "/env/s.sock");
  EXPECT_EQ(ResolveSocketPath("/x/y.sock"), "/x/y.sock");
  ::unsetenv("SHMBROKER_SOCKET");
  if (::geteuid() != 0) {
    ExpectNonRootResolution(absent, present);
  } else {
    ::setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
    EXPECT_EQ(ResolveSocketPath(""), "/run/shmbroker/shmbroker.sock");
    EXPECT_EQ(ResolveDaemonSocketPath(""), "/run/shmbroker/shmbroker.sock");
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(2);
      ExpectNonRootResolution(absent, present);
      ::_exit(::testing::Test::HasFailure() ? 1 : 0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  }
  ::unlink(present.c_str());
  ::rmdir(dir.c_str());
}

TEST(Posix, ErrorsSayWhatFailedAndPickTheirCode) {
  Status s = PosixError("memfd_create", EMFILE);
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_EQ(s.message(), std::string("memfd_create: ") + std::strerror(EMFILE));
  EXPECT_EQ(PosixError("fallocate", ENOSPC).code(), Code::kResourceExhausted);
  EXPECT_EQ(PosixError("open", EACCES).code(), Code::kInternal);
}

TEST(Posix, UnixAddresses) {
  auto a = MakeUnixAddress("/run/x.sock");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->addr.sun_family, AF_UNIX);
  EXPECT_STREQ(a->addr.sun_path, "/run/x.sock");
  EXPECT_EQ(MakeUnixAddress("").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(MakeUnixAddress(std::string(108, 'x')).status().code(), Code::kInvalidArgument);
  EXPECT_TRUE(MakeUnixAddress(std::string(107, 'x')).ok());
}

TEST(Posix, ConnectNamesThePathAndTheErrno) {
  ConnectError e;
  EXPECT_FALSE(ConnectSeqPacket("/nonexistent-dir/s.sock", &e).has_value());
  EXPECT_EQ(e.error, ENOENT);
  EXPECT_NE(e.message.find("/nonexistent-dir/s.sock"), std::string::npos) << e.message;
}

TEST(Posix, FdMessageCarriesDataAndDescriptors) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  UniqueFd r(pipefd[0]), w(pipefd[1]);
  std::string text = "hello";
  int fds[] = {w.get()};
  FdMessage m(std::as_bytes(std::span(text)), fds);
  ASSERT_EQ(::sendmsg(a.get(), m.get(), 0), 5);
  char buf[16];
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  iovec iov{buf, sizeof(buf)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ASSERT_EQ(::recvmsg(b.get(), &msg, MSG_CMSG_CLOEXEC), 5);
  int got = -1;
  std::memcpy(&got, CMSG_DATA(CMSG_FIRSTHDR(&msg)), sizeof(int));
  UniqueFd received(got);
  ASSERT_EQ(::write(received.get(), "z", 1), 1);  // The same pipe, through the passed fd.
  char z = 0;
  ASSERT_EQ(::read(r.get(), &z, 1), 1);
  EXPECT_EQ(z, 'z');
  EXPECT_EQ(std::string(buf, 5), "hello");
}

TEST(Posix, ParseUint) {
  EXPECT_EQ(ParseUint("0"), 0u);
  EXPECT_EQ(ParseUint("18446744073709551615"), ~std::uint64_t{0});
  for (const char* bad : {"", "+1", "-1", " 1", "1 ", "1x", "18446744073709551616"}) {
    EXPECT_FALSE(ParseUint(bad).has_value()) << bad;
  }
}

TEST(Posix, NowUnixNsIsTheSystemClock) {
  std::int64_t t = NowUnixNs();
  EXPECT_GT(t, std::int64_t{1'700'000'000} * 1'000'000'000);
  EXPECT_LE(t, NowUnixNs());
}

}  // namespace
}  // namespace shmbroker
