// Turns one request packet into one reply: parsing, the handshake, dispatch to the registry, and
// per-connection attachment bookkeeping. No I/O here, so it is tested without sockets.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "fd_budget.h"
#include "log.h"
#include "registry.h"
#include "resource_limits.h"
#include "session.h"
#include "shmbroker.pb.h"

namespace shmbroker::daemon {

struct DaemonInfo {
  std::string version;
  std::string socket_path;
  std::int64_t started_unix_ns = 0;
};

class RequestHandler {
 public:
  // `fds` (may be null in tests): the daemon's descriptor budget, checked before creates.
  RequestHandler(Registry& registry, DaemonInfo info, Limits limits = {}, FdBudget* fds = nullptr);

  void Opened(Session& session);
  // Releases everything the connection held.
  void Closed(Session& session);
  // `out` was not sent: the client hung up first (see Connection). What it attached or sent is
  // not held for that client at the close.
  void Undelivered(Session& session, const Outcome& out);

  // Parses and answers one packet.
  Outcome Handle(Session& session, std::span<const std::byte> packet);
  // The reply for a packet that could not even be read whole (truncated, fds attached).
  Outcome ProtocolError(Session& session, const std::string& why);

  Registry& registry() { return registry_; }
  const Limits& limits() const { return limits_; }
  void set_limits(const Limits& limits) { limits_ = limits; }
  // With systemd's fd store in use: `when_stored(done)` calls `done` once every change handed to
  // the store so far is with the service manager, or returns false when it already is. Replies
  // that acknowledge a change (create, unlink, purge) then wait for it.
  using WhenStored = std::function<bool(std::function<void()>)>;
  void set_when_stored(WhenStored when_stored) { when_stored_ = std::move(when_stored); }
  // OK when `uid` may add `n` entries to the service manager's fd store (FdStore::MayStore).
  // Unset (no fd store): always.
  using MayStore =
      std::function<Status(std::uint32_t uid, std::size_t n, std::size_t record_bytes)>;
  void set_may_store(MayStore may_store) { may_store_ = std::move(may_store); }
  // Where slow work goes: `offload(job, then)` runs `job` off the event loop, then `then` on it.
  // Unset (tests), creates of any size reserve their memory inline.
  using Offload = std::function<void(std::function<void()> job, std::function<void()> then)>;
  void set_offload(Offload offload) { offload_ = std::move(offload); }
  // Creates from this size up reserve their memory off the event loop (~0.5 ms per MiB inline).
  static constexpr std::uint64_t kOffLoopBytes = 16 << 20;
  void set_socket_path(std::string path) { info_.socket_path = std::move(path); }
  // A connection closed without releasing blocks of shared regions (or regions of their own that
  // will go to the warm pool): its process (`pid`) may still map them, so they must not be
  // zeroed or reused before it exits. `hold(pid, uid, segments)` keeps them until then. Unset
  // (tests), they are released at once.
  using HoldUntilExit = std::function<void(std::uint32_t pid, std::uint32_t uid,
                                           std::vector<std::shared_ptr<SegmentEntry>>)>;
  void set_hold_until_exit(HoldUntilExit hold) { hold_until_exit_ = std::move(hold); }
  std::uint32_t clients() const { return clients_; }
  // Where timed work is scheduled: `wake_at(unix_ns)` makes the server call Tick() at that time
  // (ttl expiries, lapsing tickets, waits running out). Unset (tests), Tick is called by hand.
  void set_wake_at(std::function<void(std::int64_t)> wake_at) { wake_at_ = std::move(wake_at); }
  void Tick();
  // Attaches waiting for a segment (attach with wait_ms), for stats.
  std::size_t waiters() const { return waiters_.size(); }
  // The client went while its connection awaited a deferred reply: a wait ends at once, with no
  // reply (true); other deferred work (a create off the event loop, the fd store) completes.
  bool Abandon(Session& session);

 private:
  Outcome Dispatch(Session& session, const wire::Request& request);
  Outcome Hello(Session& session, const wire::Hello& hello);
  Outcome Create(Session& session, const wire::CreateRequest& req);
  Outcome Attach(Session& session, const wire::AttachRequest& req);
  Outcome Detach(Session& session, const wire::DetachRequest& req);
  // After a create's memory was refused: evicts the warm pool's memory and says whether to
  // retry (once).
  bool EvictForRetry(const Result<SegmentMemory>& memory, std::uint64_t size);
  Outcome Unlink(Session& session, const wire::UnlinkRequest& req);
  Outcome Stat(Session& session, const wire::StatRequest& req);
  Outcome List(Session& session, const wire::ListRequest& req);
  Outcome Stats(Session& session);
  Outcome Purge(Session& session, const wire::PurgeRequest& req);
  Outcome Seal(Session& session, const wire::SealRequest& req);
  Outcome Ticket(Session& session, const wire::TicketRequest& req);
  Outcome Trim(Session& session);
  // An attach that waits for its segment (wait_ms): its reply comes from Wake or Tick. With
  // `for_ticket`, a by_ticket attach whose ticket is not lent yet: from WakeTicket, or from Tick
  // (then looked up by name).
  Outcome Wait(Session& session, const wire::AttachRequest& req, bool for_ticket = false);
  // Segment `name` appeared or was sealed: the attaches waiting for it try again.
  void Wake(const std::string& name);
  // `ticket` was lent: the attach waiting for it goes on.
  void WakeTicket(std::uint64_t ticket);
  void Resume(std::uint64_t session, wire::AttachRequest req);
  // Asks for a Tick at the earliest deadline, if it is earlier than the one asked for.
  void Reschedule();

  // An attachment of `segment` for `session`, with the region fd when the connection needs it.
  // `client_id`: the id a pipelined attach chose (0: the next of the connection's own);
  // `may_send_fd` false: the reply never carries the region's fd.
  Outcome AttachReply(Session& session, std::shared_ptr<SegmentEntry> segment, Access access,
                      bool resend_fd = false, std::uint64_t client_id = 0, bool may_send_fd = true);
  Outcome Error(const Status& status);
  // The reply to a create whose memory is ready (or failed): `seg` registered by Commit.
  Outcome Created(Session& session, Result<std::shared_ptr<SegmentEntry>> seg);
  // A large create whose memory a worker reserves; tried once more after evicting the pool.
  struct PendingCreate {
    Registry::Reservation reservation;
    Result<SegmentMemory> memory = Status::Internal("not run");
    bool retried = false;
  };
  void CreateOffLoop(std::shared_ptr<PendingCreate> pending, std::uint64_t session);
  // `out`, or Deferred until the fd store has what `out` acknowledges (see set_when_stored).
  Outcome AfterStored(Session& session, Outcome out);
  // RESOURCE_EXHAUSTED when the connection, or its user, holds all the attachments it may.
  Status MayAttach(const Session& session) const;
  // `n` attachments of `uid` ended.
  void Unattached(std::uint32_t uid, std::uint64_t n);
  void FillInfo(const SegmentEntry& s, wire::SegmentInfo* info) const;
  std::int64_t InFlightNs() const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(limits_.in_flight_timeout).count();
  }

  // The holders of `s` (connections with attachments), for stat.
  void FillHolders(const SegmentEntry& s, wire::SegmentInfo* info) const;

  Registry& registry_;
  DaemonInfo info_;
  Limits limits_;
  FdBudget* fds_;
  WhenStored when_stored_;
  MayStore may_store_;
  // RESOURCE_EXHAUSTED (counted) when `uid` may not add `n` entries to the fd store.
  Status MayStoreEntries(std::uint32_t uid, std::size_t n, std::size_t record_bytes = 0);
  Offload offload_;
  HoldUntilExit hold_until_exit_;
  // A flood of bad packets (one per connection) costs a bounded number of log lines.
  Throttle protocol_errors_{20, std::chrono::seconds(1)};
  std::uint32_t clients_ = 0;
  std::unordered_map<std::uint64_t, Session*> sessions_;  // Open ones, by id.
  // Attachments held, by uid: each costs the daemon memory, so one user (root exempt) holds at
  // most kAttachmentsPerUserFactor connections' worth.
  static constexpr std::uint32_t kAttachmentsPerUserFactor = 16;
  std::unordered_map<std::uint32_t, std::uint64_t> attachments_of_;
  std::array<std::uint64_t, wire::Request::kTrim + 1> requests_{};
  struct Waiter {
    wire::AttachRequest request;
    std::int64_t deadline_unix_ns = 0;
    bool for_ticket = false;
  };
  // By session id (a waiting connection reads nothing more, so one each), with indexes by name
  // and by deadline.
  std::unordered_map<std::uint64_t, Waiter> waiters_;
  std::multimap<std::string, std::uint64_t> waiting_for_;
  std::unordered_map<std::uint64_t, std::uint64_t> waiting_ticket_;  // Ticket -> session.
  std::set<std::pair<std::int64_t, std::uint64_t>> wait_deadlines_;
  // Says which daemon a region id belongs to (HelloReply.instance).
  std::uint64_t instance_;
  void EndWait(std::uint64_t session);
  std::function<void(std::int64_t)> wake_at_;
  std::int64_t wake_scheduled_ = 0;  // 0: none.
  std::array<std::uint64_t, kMaxCode + 1> errors_{};
};

}  // namespace shmbroker::daemon
