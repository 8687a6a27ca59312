// Bad input from one client costs that client its connection, never the daemon or another
// client's data.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "test_daemon.h"

namespace shmbroker::testing {
namespace {

class MalformedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    good_.emplace(d_.MustConnect("well-behaved"));
    auto seg = good_->Create({.name = "precious", .shape = {65536}});
    ASSERT_TRUE(seg.ok());
    auto bytes = seg->mutable_bytes().value();
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = std::byte(i * 31);
    seg_.emplace(std::move(seg).value());
  }

  // The daemon is alive, the well-behaved client still works, and its data is intact.
  void ExpectOthersUnharmed() {
    EXPECT_TRUE(d_.alive()) << d_.log();
    auto st = good_->Stat("precious");
    ASSERT_TRUE(st.ok()) << st.status().ToString();
    auto view = good_->Attach("precious");
    ASSERT_TRUE(view.ok());
    auto bytes = view->bytes();
    std::size_t bad = 0;
    for (std::size_t i = 0; i < bytes.size(); ++i) bad += bytes[i] != std::byte(i * 31);
    EXPECT_EQ(bad, 0u);
    auto fresh = d_.Connect("new");
    EXPECT_TRUE(fresh.ok());
  }

  // After bad input: a PROTOCOL_ERROR reply (when the daemon could answer) and then EOF.
  void ExpectProtocolErrorThenClose(RawConnection& raw) {
    auto reply = raw.Receive();
    ASSERT_TRUE(reply.has_value()) << "no reply";
    EXPECT_EQ(reply->code(), wire::PROTOCOL_ERROR) << reply->message();
    EXPECT_FALSE(reply->message().empty());
    EXPECT_TRUE(raw.ClosedByPeer());
  }

  TestDaemon d_;
  std::optional<Client> good_;
  std::optional<Segment> seg_;
};

TEST_F(MalformedTest, RandomBytes) {
  for (int seed = 1; seed <= 20; ++seed) {
    RawConnection raw(d_.socket());
    ASSERT_TRUE(raw.ok());
    if (seed % 2 == 0) {  // Garbage before and after the handshake.
      ASSERT_TRUE(raw.Hello());
    }
    std::mt19937 rng(seed);
    std::string junk(1 + rng() % 2000, '\0');
    for (char& ch : junk) ch = static_cast<char>(rng());
    ASSERT_EQ(raw.SendBytes(junk), 0);
    auto reply = raw.Receive();
    // Random bytes can happen to parse as a Request; whatever the answer, it is an answer.
    ASSERT_TRUE(reply.has_value()) << "seed " << seed;
    EXPECT_NE(reply->code(), wire::OK) << "seed " << seed;
  }
  ExpectOthersUnharmed();
}

TEST_F(MalformedTest, TruncatedRequest) {
  RawConnection raw(d_.socket());
  ASSERT_TRUE(raw.Hello());
  wire::Request req;
  req.mutable_create()->set_name("truncated-name-that-is-long-enough");
  req.mutable_create()->set_dtype("<f8");
  req.mutable_create()->add_shape(10);
  std::string bytes = req.SerializeAsString();
  ASSERT_EQ(raw.SendBytes(bytes.substr(0, bytes.size() / 2)), 0);
  ExpectProtocolErrorThenClose(raw);
  EXPECT_EQ(good_->Stat("truncated-name-that-is-long-enough").status().code(), Code::kNotFound);
  ExpectOthersUnharmed();
}

TEST_F(MalformedTest, RequestBeforeHello) {
  RawConnection raw(d_.socket());
  wire::Request req;
  req.mutable_unlink()->set_name("precious");
  ASSERT_EQ(raw.Send(req), 0);
  ExpectProtocolErrorThenClose(raw);
  ExpectOthersUnharmed();
}

TEST_F(MalformedTest, OversizedPacket) {
  RawConnection raw(d_.socket());
  ASSERT_TRUE(raw.Hello());
  int big = 4 << 20;
  // As root the buffer may exceed wmem_max; otherwise the kernel caps it.
  if (::setsockopt(raw.fd(), SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big)) != 0) {
    ::setsockopt(raw.fd(), SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
  }
  std::size_t size = 1 << 20;
  int err;
  while ((err = raw.SendBytes(std::string(size, 'x'))) == EMSGSIZE && size > (80 << 10)) {
    size -= 16 << 10;  // The largest packet the kernel accepts, still over the 64 KiB limit.
  }
  ASSERT_EQ(err, 0) << std::strerror(err);
  ASSERT_GT(size, wire::kMaxRequestBytes);
  ExpectProtocolErrorThenClose(raw);
  ExpectOthersUnharmed();
}

TEST_F(MalformedTest, UnknownMessage) {
  RawConnection raw(d_.socket());
  ASSERT_TRUE(raw.Hello());
  // Field 99, length-delimited: a request from a protocol this daemon does not know.
  ASSERT_EQ(raw.SendBytes(std::string("\x9a\x06\x02\x08\x01", 5)), 0);
  ExpectProtocolErrorThenClose(raw);
  ExpectOthersUnharmed();
}

TEST_F(MalformedTest, FdsFromTheClientAreClosedAndRefused) {
  RawConnection raw(d_.socket());
  ASSERT_TRUE(raw.Hello());
  // A memfd with a unique name, so that the daemon's copies can be told apart in /proc.
  std::string label = "client-sent-" + std::to_string(::getpid());
  int efd = ::memfd_create(label.c_str(), MFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  wire::Request req;
  req.mutable_stats();
  ASSERT_EQ(raw.SendBytes(req.SerializeAsString(), {efd, efd}), 0);
  ExpectProtocolErrorThenClose(raw);
  // The daemon closed its copies: none of its fds refers to our eventfd.
  std::string ours = std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(efd));
  std::size_t copies = 0;
  for (auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(d_.pid()) + "/fd")) {
    std::error_code ec;
    if (std::filesystem::read_symlink(e.path(), ec).string() == ours) ++copies;
  }
  EXPECT_EQ(copies, 0u);
  ::close(efd);
  ExpectOthersUnharmed();
}

TEST_F(MalformedTest, UnsupportedVersionGetsFailedPrecondition) {
  RawConnection raw(d_.socket());
  wire::Request req;
  req.mutable_hello()->set_protocol_version(1000);
  ASSERT_EQ(raw.Send(req), 0);
  auto reply = raw.Receive();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code(), wire::FAILED_PRECONDITION);
  EXPECT_NE(reply->message().find("1000"), std::string::npos) << reply->message();
  EXPECT_TRUE(raw.ClosedByPeer());
  ExpectOthersUnharmed();
}

TEST_F(MalformedTest, ClientThatNeverReadsDoesNotStallOthers) {
  RawConnection raw(d_.socket());
  ASSERT_TRUE(raw.Hello());
  wire::Request req;
  req.mutable_list();
  // Requests whose replies are never read: the daemon must wait on this socket, not block.
  ::fcntl(raw.fd(), F_SETFL, ::fcntl(raw.fd(), F_GETFL) | O_NONBLOCK);
  int sent = 0;
  while (sent < 5000 && raw.SendBytes(req.SerializeAsString()) == 0) ++sent;
  EXPECT_GT(sent, 0);
  ExpectOthersUnharmed();
}

}  // namespace
}  // namespace shmbroker::testing
