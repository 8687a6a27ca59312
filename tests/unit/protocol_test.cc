// Round trips of every protocol message: serialize, parse, compare; and one packet with an fd
// through a real SEQPACKET socket pair.
#include <fcntl.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "shmbroker.pb.h"
#include "shmbroker/status.h"
#include "wire.h"

namespace shmbroker::wire {
namespace {

using google::protobuf::Message;
using google::protobuf::util::MessageDifferencer;

template <typename M>
void ExpectRoundTrip(const M& original) {
  std::string bytes;
  ASSERT_TRUE(original.SerializeToString(&bytes));
  M parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  EXPECT_TRUE(MessageDifferencer::Equals(original, parsed))
      << original.ShortDebugString() << "\nvs\n"
      << parsed.ShortDebugString();
  // Every field set in the sample must survive: a message that lost fields would compare equal
  // only if the sample left them empty, so the samples set every field.
  EXPECT_EQ(original.ByteSizeLong(), parsed.ByteSizeLong());
}

SegmentInfo SampleInfo() {
  SegmentInfo i;
  i.set_name("job7/weights");
  i.set_dtype("<M8[ns]");
  i.add_shape(3);
  i.add_shape(0);
  i.add_shape(1ull << 40);
  i.set_order(ORDER_F);
  i.set_nbytes(123456789012ull);
  (*i.mutable_attrs())["units"] = "m/s";
  (*i.mutable_attrs())["note"] = "caf\xc3\xa9";
  i.set_uid(1000);
  i.set_gid(100);
  i.set_creator_pid(4242);
  i.set_created_unix_ns(1795000000123456789ll);
  i.set_mode(0640);
  i.set_attachments(7);
  i.set_creator_connected(true);
  return i;
}

TEST(Protocol, HelloRoundTrips) {
  Request r;
  r.mutable_hello()->set_protocol_version(PROTOCOL_VERSION_CURRENT);
  r.mutable_hello()->set_client_name("python:worker-3");
  ExpectRoundTrip(r);
}

TEST(Protocol, CreateRoundTrips) {
  Request r;
  auto* c = r.mutable_create();
  c->set_name("a/b");
  c->set_dtype("<c16");
  c->add_shape(2);
  c->add_shape(5);
  c->set_order(ORDER_F);
  c->set_mode(0);  // Present but zero: must stay distinguishable from absent.
  (*c->mutable_attrs())["k"] = "v";
  ExpectRoundTrip(r);
  Request parsed;
  ASSERT_TRUE(parsed.ParseFromString(r.SerializeAsString()));
  EXPECT_TRUE(parsed.create().has_mode());
  Request no_mode;
  no_mode.mutable_create()->set_name("x");
  ASSERT_TRUE(parsed.ParseFromString(no_mode.SerializeAsString()));
  EXPECT_FALSE(parsed.create().has_mode());
}

TEST(Protocol, AttachDetachUnlinkStatListStatsRoundTrip) {
  Request attach;
  attach.mutable_attach()->set_name("seg");
  attach.mutable_attach()->set_access(READ_WRITE);
  ExpectRoundTrip(attach);
  Request detach;
  detach.mutable_detach()->set_attachment_id(99);
  detach.mutable_detach()->set_released_region_id(12);
  ExpectRoundTrip(detach);
  Request unlink;
  unlink.mutable_unlink()->set_name("seg");
  ExpectRoundTrip(unlink);
  Request stat;
  stat.mutable_stat()->set_name("seg");
  ExpectRoundTrip(stat);
  Request list;
  list.mutable_list()->set_pattern("job7/*");
  list.mutable_list()->set_start_after("job7/a");
  ExpectRoundTrip(list);
  Request stats;
  stats.mutable_stats();
  ExpectRoundTrip(stats);
  Request parsed;
  ASSERT_TRUE(parsed.ParseFromString(stats.SerializeAsString()));
  EXPECT_EQ(parsed.body_case(), Request::kStats);  // An empty body still names its operation.
}

TEST(Protocol, PurgeRoundTrips) {
  Request r;
  auto* p = r.mutable_purge();
  p->add_patterns("job7/*");
  p->add_patterns("tmp/?");
  p->set_orphans(true);
  p->set_older_than_seconds(0);  // Present but zero: "older than 0s" selects everything.
  p->set_owner_uid(0);           // Present but zero: root's segments.
  p->set_unattached(true);
  p->set_all(true);
  p->set_dry_run(true);
  ExpectRoundTrip(r);
  Request parsed;
  ASSERT_TRUE(parsed.ParseFromString(r.SerializeAsString()));
  EXPECT_TRUE(parsed.purge().has_older_than_seconds());
  EXPECT_TRUE(parsed.purge().has_owner_uid());

  Reply reply;
  auto* pr = reply.mutable_purge();
  auto* x = pr->add_removed();
  x->set_name("job7/a");
  x->set_nbytes(4096);
  x->set_uid(1000);
  pr->set_truncated(true);
  pr->set_removed_count(12);
  pr->set_bytes_freed(1 << 20);
  pr->set_skipped_not_owner(3);
  ExpectRoundTrip(reply);
}

TEST(Protocol, HelloReplyRoundTrips) {
  Reply r;
  auto* h = r.mutable_hello();
  h->set_protocol_version(1);
  h->set_server_version("0.1.0");
  h->set_server_pid(77);
  auto* l = h->mutable_limits();
  l->set_max_name_bytes(255);
  l->set_max_dims(32);
  l->set_max_attrs(32);
  l->set_max_attr_key_bytes(64);
  l->set_max_attr_value_bytes(1024);
  l->set_max_request_bytes(65536);
  l->set_max_reply_bytes(98304);
  l->set_max_memory(8ull << 30);
  ExpectRoundTrip(r);
}

TEST(Protocol, AttachReplyRoundTrips) {
  Reply r;
  auto* a = r.mutable_attach();
  *a->mutable_info() = SampleInfo();
  a->set_attachment_id(5);
  auto* m = a->mutable_mapping();
  m->set_region_id(11);
  m->set_offset(4096);
  m->set_length(8192);
  m->set_region_size(1 << 20);
  m->set_access(READ_WRITE);
  m->set_fd_attached(true);
  ExpectRoundTrip(r);
}

TEST(Protocol, StatListStatsErrorAndEmptyRepliesRoundTrip) {
  Reply stat;
  *stat.mutable_stat() = SampleInfo();
  ExpectRoundTrip(stat);
  Reply list;
  *list.mutable_list()->add_segments() = SampleInfo();
  *list.mutable_list()->add_segments() = SampleInfo();
  list.mutable_list()->set_truncated(true);
  ExpectRoundTrip(list);
  Reply stats;
  auto* s = stats.mutable_stats();
  s->set_server_version("0.1.0");
  s->set_server_pid(1);
  s->set_started_unix_ns(17);
  s->set_socket_path("/run/shmbroker/shmbroker.sock");
  s->set_segments(3);
  s->set_bytes_held(4096);
  s->set_max_memory(1 << 30);
  s->set_clients(2);
  auto* c = s->add_requests();
  c->set_name("create");
  c->set_value(9);
  c = s->add_errors();
  c->set_name("NOT_FOUND");
  c->set_value(1);
  ExpectRoundTrip(stats);
  Reply error;
  error.set_code(NOT_FOUND);
  error.set_message("no segment named 'x'");
  ExpectRoundTrip(error);
  Reply empty;
  empty.mutable_empty();
  ExpectRoundTrip(empty);
}

TEST(Protocol, CodesMatchTheClientEnum) {
  for (int c = 0; c <= kMaxCode; ++c) {
    ASSERT_TRUE(Code_IsValid(c));
    EXPECT_EQ(Code_Name(static_cast<wire::Code>(c)), CodeName(static_cast<shmbroker::Code>(c)));
  }
  EXPECT_FALSE(Code_IsValid(kMaxCode + 1));
}

TEST(Protocol, PacketWithFdTravelsAsOneUnit) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  int pipefd[2];
  ASSERT_EQ(::pipe2(pipefd, O_CLOEXEC), 0);
  UniqueFd pr(pipefd[0]), pw(pipefd[1]);

  Reply reply;
  *reply.mutable_stat() = SampleInfo();
  std::string bytes = reply.SerializeAsString();
  int fds[] = {pr.get()};
  ASSERT_EQ(SendPacket(a.get(), std::as_bytes(std::span(bytes)), fds, false), 0);
  // A second packet must stay separate.
  ASSERT_EQ(SendPacket(a.get(), std::as_bytes(std::span(bytes)), {}, false), 0);

  std::vector<std::byte> buf(kMaxReplyBytes + 1);
  RecvResult r = RecvPacket(b.get(), buf, false);
  ASSERT_EQ(r.status, RecvStatus::kOk);
  ASSERT_EQ(r.size, bytes.size());
  ASSERT_EQ(r.fds.size(), 1u);
  EXPECT_EQ(::fcntl(r.fds[0].get(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  Reply parsed;
  ASSERT_TRUE(parsed.ParseFromArray(buf.data(), static_cast<int>(r.size)));
  EXPECT_TRUE(MessageDifferencer::Equals(reply, parsed));
  // The fd is the same pipe: bytes written to the write end come out of it.
  ASSERT_EQ(::write(pw.get(), "ok", 2), 2);
  char got[2];
  ASSERT_EQ(::read(r.fds[0].get(), got, 2), 2);
  EXPECT_EQ(std::memcmp(got, "ok", 2), 0);

  RecvResult second = RecvPacket(b.get(), buf, false);
  ASSERT_EQ(second.status, RecvStatus::kOk);
  EXPECT_EQ(second.size, bytes.size());
  EXPECT_TRUE(second.fds.empty());
  EXPECT_EQ(RecvPacket(b.get(), buf, true).status, RecvStatus::kWouldBlock);
  a.reset();
  EXPECT_EQ(RecvPacket(b.get(), buf, false).status, RecvStatus::kClosed);
}

TEST(Protocol, OversizedPacketIsReportedTruncated) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  std::string big(kMaxRequestBytes + 100, 'x');
  ASSERT_EQ(SendPacket(a.get(), std::as_bytes(std::span(big)), {}, false), 0);
  std::vector<std::byte> buf(kMaxRequestBytes + 1);
  EXPECT_EQ(RecvPacket(b.get(), buf, false).status, RecvStatus::kTruncated);
}

}  // namespace
}  // namespace shmbroker::wire
