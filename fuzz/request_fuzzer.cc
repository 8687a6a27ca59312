// libFuzzer target: the daemon's request path in-process, driven as Connection drives it. One
// input is a script of packets from a few connections of different users, run against a fresh
// Registry and RequestHandler: parsing, the handshake, dispatch (create, attach, detach, unlink,
// stat, list, stats, purge) and each connection's bookkeeping, until every connection closes.
//
// Input: records of [op: 1 byte][n: u16 little-endian][n bytes], to the end of the input.
//   op bits 0-2  the connection (0..7), opened by its first record, as the user Users() gives:
//                0, 1, 5 this process's uid and gid (1000 when run as root); 2, 6 another uid
//                in that group (a supplementary one); 3, 7 another uid and gid; 4 root.
//   op bits 3-4  0, 1: the n bytes are one request packet (RequestHandler::Handle).
//                2: a packet Connection could not pass on (ProtocolError): truncated when the
//                first byte is 0 or there is none, else one that came with fds.
//                3: the client hangs up; its next record connects again.
// As in Connection, a reply with close_connection ends its connection, and a deferred reply
// holds the connection's packets until its sink completes it.
//
// Checked beyond the sanitizers: every reply passes CheckReply; when every connection has closed
// nothing is attached any more; once the handler and the registry are gone the input has left no
// descriptor open. Sizes stay small (FuzzLimits), so one input holds a few MiB at most.
#include <unistd.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "fd_budget.h"
#include "fuzz_support.h"
#include "region.h"
#include "registry.h"
#include "request_handler.h"
#include "session.h"

namespace shmbroker::fuzz {
namespace {

using daemon::Credentials;
using daemon::Outcome;
using daemon::Session;

constexpr std::size_t kConnections = 8;

// Small caps: an input's segments stay within a few MiB, and it can reach every one of them.
daemon::Limits FuzzLimits() {
  daemon::Limits l;
  l.max_memory = 4 << 20;
  l.max_memory_per_user = 2 << 20;
  l.max_segments_per_user = 32;
  l.max_attachments_per_connection = 64;
  return l;
}

std::array<Credentials, kConnections> Users() {
  std::uint32_t uid = ::getuid() != 0 ? ::getuid() : 1000;
  std::uint32_t gid = ::getgid() != 0 ? ::getgid() : 1000;
  auto pid = static_cast<std::uint32_t>(::getpid());
  Credentials self{uid, gid, pid, {gid}};
  Credentials group_member{uid + 1, gid + 1, pid, {gid + 1, gid}};
  Credentials stranger{uid + 2, gid + 2, pid, {gid + 2}};
  Credentials root{0, 0, pid, {0}};
  return {self, self, group_member, stranger, root, self, group_member, stranger};
}

// Collects the replies the handler gives later, where Connection::Complete would send them.
class Sink : public daemon::ReplySink {
 public:
  void Complete(Outcome outcome) override { completed.push_back(std::move(outcome)); }
  std::vector<Outcome> completed;
};

struct Connection {
  Session session;
  std::shared_ptr<Sink> sink = std::make_shared<Sink>();
  bool awaiting = false;  // A deferred reply is outstanding.
};

class Run {
 public:
  Run() : registry_(Options()), handler_(registry_, Info(), FuzzLimits(), &budget_) {}

  void Record(std::uint8_t op, std::span<const std::byte> bytes) {
    std::size_t slot = op & 7;
    int action = (op >> 3) & 3;
    if (action == 3) {
      Close(slot);
      return;
    }
    Connection& c = Open(slot);
    if (c.awaiting) return;  // Connection reads nothing more until the deferred reply is out.
    Outcome out;
    if (action == 2) {
      bool truncated = bytes.empty() || bytes[0] == std::byte{0};
      out = handler_.ProtocolError(
          c.session, truncated ? truncated_ : "clients must not send file descriptors");
    } else {
      out = handler_.Handle(c.session, bytes);
    }
    if (out.deferred) {
      c.awaiting = true;
    } else {
      Reply(slot, std::move(out));
    }
    Completions();
  }

  // Every connection closes; the caller then lets the handler and the registry go.
  void Finish() {
    for (std::size_t slot = 0; slot < kConnections; ++slot) Close(slot);
    FUZZ_CHECK(handler_.clients() == 0, "clients counted after every connection closed");
    Status listed = registry_.List("", "", [](const daemon::SegmentEntry& s) {
      FUZZ_CHECK(s.attachments() == 0 && s.holders().empty(),
                 "a segment still attached after every connection closed");
      return true;
    });
    FUZZ_CHECK(listed.ok(), "cannot list the registry");
  }

 private:
  static daemon::RegistryOptions Options() {
    daemon::Limits l = FuzzLimits();  // As Server passes them on.
    return daemon::RegistryOptions{.max_memory = l.max_memory,
                                   .max_memory_per_user = l.max_memory_per_user,
                                   .max_segments_per_user = l.max_segments_per_user};
  }
  static daemon::DaemonInfo Info() { return {"0.0.0-fuzz", "/run/shmbroker/fuzz.sock", 1}; }

  Connection& Open(std::size_t slot) {
    auto& c = connections_[slot];
    if (!c) {
      c = std::make_unique<Connection>();
      c->session.id = next_id_++;
      c->session.creds = users_[slot];
      c->session.sink = c->sink;
      handler_.Opened(c->session);
    }
    return *c;
  }

  void Close(std::size_t slot) {
    auto& c = connections_[slot];
    if (!c) return;
    handler_.Closed(c->session);
    c.reset();
  }

  // What Connection does with a reply: sends it (here: checks it), then closes if told to.
  void Reply(std::size_t slot, Outcome out) {
    CheckReply(out);
    if (out.close_connection) Close(slot);
  }

  void Completions() {
    for (std::size_t slot = 0; slot < kConnections; ++slot) {
      auto& c = connections_[slot];
      if (!c || c->sink->completed.empty()) continue;
      FUZZ_CHECK(c->awaiting && c->sink->completed.size() == 1,
                 "a reply completed that was not deferred, or twice");
      Outcome out = std::move(c->sink->completed.front());
      c->sink->completed.clear();
      c->awaiting = false;
      Reply(slot, std::move(out));
    }
  }

  // A fixed budget (no /proc scan per input) that a few dozen segments reach.
  daemon::FdBudget budget_{256, 64};
  daemon::Registry registry_;
  daemon::RequestHandler handler_;
  const std::array<Credentials, kConnections> users_ = Users();
  const std::string truncated_ = "packet larger than " + std::to_string(wire::kMaxRequestBytes) +
                                 " bytes or with control data that did not fit";
  std::array<std::unique_ptr<Connection>, kConnections> connections_;
  std::uint64_t next_id_ = 1;
};

}  // namespace
}  // namespace shmbroker::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  shmbroker::fuzz::InstallLogger();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using shmbroker::fuzz::OpenFds;
  std::size_t fds_before = OpenFds();
  {
    shmbroker::fuzz::Run run;
    shmbroker::fuzz::Input in(data, size);
    while (!in.empty()) {
      std::uint8_t op = in.U8();
      std::uint16_t n = in.U16();
      run.Record(op, in.Bytes(n));
    }
    run.Finish();
  }
  FUZZ_CHECK(shmbroker::daemon::Region::open_fds() == 0, "a region outlived its registry");
  FUZZ_CHECK(OpenFds() == fds_before, "the input left descriptors open");
  return 0;
}
