#include "request_handler.h"

#include <unistd.h>

#include <algorithm>
#include <random>

#include <spdlog/spdlog.h>

#include "common/posix.h"
#include "common/text.h"
#include "common/units.h"
#include "log.h"
#include "validate.h"
#include "wire_convert.h"

namespace shmbroker::daemon {
namespace {

// How long a by_ticket attach waits for its ticket before looking the segment up by name: the
// ticket left before the bytes did, so it is only on another connection the loop has not read.
constexpr std::int64_t kTicketWaitNs = 1'000'000'000;

static_assert(static_cast<int>(Code::kUnavailable) == wire::UNAVAILABLE &&
                  static_cast<int>(Code::kInternal) == wire::INTERNAL &&
                  static_cast<int>(Code::kProtocolError) == wire::PROTOCOL_ERROR &&
                  static_cast<int>(Code::kNotFound) == wire::NOT_FOUND,
              "shmbroker::Code must match the wire codes");

// By body case.
constexpr std::string_view kOpNames[] = {"none",   "hello",  "create", "attach", "detach",
                                         "unlink", "stat",   "list",   "stats",  "purge",
                                         "seal",   "ticket", "trim"};
static_assert(std::size(kOpNames) == wire::Request::kTrim + 1);

std::string Quoted(std::string_view name) { return "'" + std::string(name) + "'"; }

// Reply pages stay well below the largest reply a client reads, whatever the entries hold.
constexpr std::size_t kListPageBytes = wire::kMaxReplyBytes / 2;

}  // namespace

RequestHandler::RequestHandler(Registry& registry, DaemonInfo info, Limits limits, FdBudget* fds)
    : registry_(registry), info_(std::move(info)), limits_(limits), fds_(fds) {
  std::random_device random;
  instance_ = (std::uint64_t{random()} << 32 | random()) | 1;
}

void RequestHandler::Opened(Session& session) {
  ++clients_;
  if (fds_ != nullptr) fds_->ConnectionOpened();
  sessions_.emplace(session.id, &session);
  registry_.ConnectionOpened(session.id);
}

void RequestHandler::Closed(Session& session) {
  std::vector<std::shared_ptr<SegmentEntry>> held;
  for (auto& [id, att] : session.attachments) {
    registry_.Detach(*att.segment, session.id, att.access);
    if (att.segment->shared() && att.delivered) held.push_back(att.segment);
  }
  Unattached(session.creds.uid, session.attachments.size());
  session.attachments.clear();
  // A region of its own that goes to the warm pool once released must not be reused while this
  // process may still map it either.
  for (auto& [id, seg] : session.regions_sent) {
    if (seg && seg->region()->recyclable()) held.push_back(seg);
  }
  // One entry a segment, however many attachments of it the connection had.
  std::sort(held.begin(), held.end());
  held.erase(std::unique(held.begin(), held.end()), held.end());
  if (!held.empty() && hold_until_exit_) {
    hold_until_exit_(session.creds.pid, session.creds.uid, std::move(held));
  }
  session.regions_sent.clear();
  EndWait(session.id);  // A waiter that hangs up costs nothing more.
  registry_.ConnectionClosed(session.id);
  sessions_.erase(session.id);
  if (fds_ != nullptr) fds_->ConnectionClosed();
  --clients_;
}

void RequestHandler::Undelivered(Session& session, const Outcome& out) {
  if (out.reply.body_case() != wire::Reply::kAttach) return;
  const wire::AttachReply& a = out.reply.attach();
  auto it = session.attachments.find(a.attachment_id());
  if (it != session.attachments.end()) it->second.delivered = false;
  if (a.mapping().fd_attached()) session.regions_sent.erase(a.mapping().region_id());
}

void RequestHandler::Unattached(std::uint32_t uid, std::uint64_t n) {
  auto it = attachments_of_.find(uid);
  if (it == attachments_of_.end() || n == 0) return;
  it->second -= std::min(it->second, n);
  if (it->second == 0) attachments_of_.erase(it);
}

Outcome RequestHandler::Error(const Status& status) {
  Outcome out;
  out.reply.set_code(static_cast<wire::Code>(status.code()));
  out.reply.set_message(status.message());
  ++errors_[static_cast<int>(status.code())];
  return out;
}

Outcome RequestHandler::ProtocolError(Session& session, const std::string& why) {
  Throttled(protocol_errors_, spdlog::level::warn,
            "client {} (pid {}, uid {}): protocol error: {}; closing its connection", session.id,
            session.creds.pid, session.creds.uid, why);
  Outcome out = Error(Status::ProtocolError(why));
  out.close_connection = true;
  return out;
}

Outcome RequestHandler::Handle(Session& session, std::span<const std::byte> packet) {
  wire::Request request;
  if (!request.ParseFromArray(packet.data(), static_cast<int>(packet.size()))) {
    return ProtocolError(session, "the packet is not a shmbroker Request (" +
                                      std::to_string(packet.size()) + " bytes)");
  }
  if (request.body_case() == wire::Request::BODY_NOT_SET) {
    return ProtocolError(session, "the request has no known operation (a newer client?)");
  }
  ++requests_[request.body_case()];
  if (spdlog::should_log(spdlog::level::debug)) {  // Formatting the request is not free.
    spdlog::debug("client {}: {} {}", session.id, kOpNames[request.body_case()],
                  Escaped(request.ShortDebugString()));
  }
  if (!session.greeted && request.body_case() != wire::Request::kHello) {
    return ProtocolError(session, "the first request must be hello");
  }
  for (const wire::TicketRequest& ticket : request.tickets()) {
    ++requests_[wire::Request::kTicket];
    Ticket(session, ticket);  // A refused ticket only counts in the stats (Error does).
  }
  for (const wire::DetachRequest& release : request.releases()) {
    ++requests_[wire::Request::kDetach];
    Detach(session, release);  // An unknown id only counts in the stats (Error does).
  }
  Outcome out = Dispatch(session, request);
  Reschedule();  // The request may have set a deadline (ttl, ticket, wait).
  return out;
}

Outcome RequestHandler::Dispatch(Session& session, const wire::Request& request) {
  switch (request.body_case()) {
    case wire::Request::kHello:
      return Hello(session, request.hello());
    case wire::Request::kCreate:
      return Create(session, request.create());
    case wire::Request::kAttach:
      return Attach(session, request.attach());
    case wire::Request::kDetach:
      return Detach(session, request.detach());
    case wire::Request::kUnlink:
      return Unlink(session, request.unlink());
    case wire::Request::kStat:
      return Stat(session, request.stat());
    case wire::Request::kList:
      return List(session, request.list());
    case wire::Request::kStats:
      return Stats(session);
    case wire::Request::kPurge:
      return Purge(session, request.purge());
    case wire::Request::kSeal:
      return Seal(session, request.seal());
    case wire::Request::kTicket:
      return Ticket(session, request.ticket());
    case wire::Request::kTrim:
      return Trim(session);
    case wire::Request::BODY_NOT_SET:
      break;
  }
  return ProtocolError(session, "unknown request");
}

Outcome RequestHandler::Hello(Session& session, const wire::Hello& hello) {
  if (session.greeted) return ProtocolError(session, "hello sent twice");
  if (hello.protocol_version() != wire::PROTOCOL_VERSION_CURRENT) {
    Outcome out = Error(Status::FailedPrecondition(
        "protocol version " + std::to_string(hello.protocol_version()) +
        " is not supported; this shmbrokerd " + info_.version + " speaks version " +
        std::to_string(wire::PROTOCOL_VERSION_CURRENT)));
    out.close_connection = true;
    spdlog::warn("client {} (pid {}): {}", session.id, session.creds.pid, out.reply.message());
    return out;
  }
  session.greeted = true;
  session.client_name = TruncateUtf8(hello.client_name(), kMaxClientNameBytes);
  spdlog::info("client {} connected: '{}' (pid {}, uid {}, gid {})", session.id,
               Escaped(session.client_name), session.creds.pid, session.creds.uid,
               session.creds.gid);
  Outcome out;
  auto* r = out.reply.mutable_hello();
  r->set_protocol_version(wire::PROTOCOL_VERSION_CURRENT);
  r->set_server_version(info_.version);
  r->set_server_pid(static_cast<std::uint32_t>(::getpid()));
  r->set_instance(instance_);
  r->set_tickets_ride(true);
  auto* l = r->mutable_limits();
  l->set_max_name_bytes(kMaxNameBytes);
  l->set_max_dims(kMaxDims);
  l->set_max_attrs(kMaxAttrs);
  l->set_max_attr_key_bytes(kMaxAttrKeyBytes);
  l->set_max_attr_value_bytes(kMaxAttrValueBytes);
  l->set_max_request_bytes(wire::kMaxRequestBytes);
  l->set_max_reply_bytes(wire::kMaxReplyBytes);
  l->set_max_memory(registry_.max_memory());
  l->set_in_flight_timeout_ms(static_cast<std::uint64_t>(limits_.in_flight_timeout.count()));
  l->set_max_attachments_per_connection(limits_.max_attachments_per_connection);
  return out;
}

void RequestHandler::FillInfo(const SegmentEntry& s, wire::SegmentInfo* info) const {
  DescribeSegment(s, info);
  info->set_attachments(s.attachments());
  info->set_creator_connected(registry_.IsConnectionOpen(s.creator_connection()));
}

void RequestHandler::FillHolders(const SegmentEntry& s, wire::SegmentInfo* info) const {
  for (const auto& h : s.holders()) {
    if (static_cast<std::size_t>(info->holders_size()) >= kMaxHolders) {
      info->set_holders_truncated(true);
      break;
    }
    auto it = sessions_.find(h.connection);
    if (it == sessions_.end()) continue;
    auto* w = info->add_holders();
    w->set_pid(it->second->creds.pid);
    w->set_uid(it->second->creds.uid);
    w->set_client_name(it->second->client_name);
    w->set_attachments(h.attachments);
    w->set_writable(h.writable);
  }
  if (s.shared() || !s.region()->retired()) return;
  // An unlinked segment is also held by connections that may still map it without attachments.
  const std::uint64_t ids[] = {s.region()->WireId(Access::kReadOnly),
                               s.region()->WireId(Access::kReadWrite)};
  for (const auto& entry : sessions_) {
    // Not a structured binding: clang 14 cannot capture one in the lambda below.
    const std::uint64_t id = entry.first;
    const Session* session = entry.second;
    bool maps =
        session->regions_sent.count(ids[0]) != 0 || session->regions_sent.count(ids[1]) != 0;
    bool attached = std::any_of(s.holders().begin(), s.holders().end(),
                                [&](const SegmentEntry::Holding& h) { return h.connection == id; });
    if (!maps || attached) continue;
    if (static_cast<std::size_t>(info->holders_size()) >= kMaxHolders) {
      info->set_holders_truncated(true);
      break;
    }
    auto* w = info->add_holders();
    w->set_pid(session->creds.pid);
    w->set_uid(session->creds.uid);
    w->set_client_name(session->client_name);
  }
}

Outcome RequestHandler::AttachReply(Session& session, std::shared_ptr<SegmentEntry> segment,
                                    Access access, bool resend_fd, std::uint64_t client_id,
                                    bool may_send_fd) {
  const std::shared_ptr<Region>& region = segment->region();
  const std::uint64_t region_id = region->WireId(access);
  bool send_fd = may_send_fd && segment->nbytes() > 0 &&
                 (resend_fd || session.regions_sent.count(region_id) == 0);
  Outcome out;
  if (send_fd) {
    auto fd = region->Fd(access);
    if (!fd.ok()) return Error(fd.status());
    out.fds.push_back(*fd);
    out.pins.emplace_back(region);
    // A region of its own keeps its segment's memory for as long as the client may map it; a
    // shared region's blocks are each held by their own attachments.
    session.regions_sent.insert_or_assign(region_id, segment->shared() ? nullptr : segment);
  }
  std::uint64_t id = client_id != 0 ? client_id : session.next_attachment_id++;
  session.attachments.emplace(id, Session::Attachment{segment, access});
  ++attachments_of_[session.creds.uid];
  registry_.Attach(*segment, session.id, access);

  auto* r = out.reply.mutable_attach();
  FillInfo(*segment, r->mutable_info());
  r->set_attachment_id(id);
  auto* m = r->mutable_mapping();
  m->set_region_id(region_id);
  m->set_offset(segment->offset());
  m->set_length(segment->nbytes());
  m->set_region_size(region->size());
  m->set_access(AccessToWire(access));
  m->set_fd_attached(send_fd);
  m->set_shared(segment->shared());
  return out;
}

Status RequestHandler::MayAttach(const Session& session) const {
  std::uint32_t uid = session.creds.uid;
  std::uint64_t per_user =
      std::uint64_t{kAttachmentsPerUserFactor} * limits_.max_attachments_per_connection;
  if (auto it = attachments_of_.find(uid);
      uid != 0 && it != attachments_of_.end() && it->second >= per_user) {
    registry_.refusals().Count(Limit::kAttachmentsPerUser);
    return Status::ResourceExhausted(
        "uid " + std::to_string(uid) + " holds " + std::to_string(it->second) +
        " attachments, the most attachments one user may (" +
        std::to_string(kAttachmentsPerUserFactor) +
        " times --max-attachments-per-connection); release some first");
  }
  if (session.attachments.size() < limits_.max_attachments_per_connection) return Status::Ok();
  registry_.refusals().Count(Limit::kAttachmentsPerConnection);
  return Status::ResourceExhausted(
      "this connection holds " + std::to_string(session.attachments.size()) +
      " attachments, the most one connection may (--max-attachments-per-connection " +
      std::to_string(limits_.max_attachments_per_connection) + "); release some first");
}

// A stored record beyond its create request: ids, owner, times, framing.
constexpr std::size_t kRecordOverhead = 96;

Outcome RequestHandler::Create(Session& session, const wire::CreateRequest& req) {
  auto spec = SpecFromCreate(req, NowUnixNs());
  if (!spec.ok()) return Error(spec.status());
  if (Status s = MayAttach(session); !s.ok()) return Error(s);
  // Its memfd, and later a read-only one.
  if (fds_ != nullptr) {
    if (Status s = fds_->MayOpen(session.creds.uid, 2); !s.ok()) return Error(s);
  }
  // An entry in the fd store (its memory, or a new shared region) and its record in the journal
  // (about the request's size).
  if (Status s = MayStoreEntries(session.creds.uid, 1, req.ByteSizeLong() + kRecordOverhead);
      !s.ok()) {
    return Error(s);
  }
  auto reserved = registry_.Reserve(std::move(spec).value(), session.creds, session.id);
  if (!reserved.ok()) return Created(session, reserved.status());
  if (registry_.Shared(reserved->size)) {
    return Created(session, registry_.CommitShared(std::move(reserved).value()));
  }
  // Pooled memory still being zeroed is used by a job queued after the zeroing.
  if (!offload_ || (reserved->size < kOffLoopBytes && !registry_.pooled_needs_offload(*reserved))) {
    auto memory = registry_.MemoryJob(*reserved)();
    if (EvictForRetry(memory, reserved->size)) memory = registry_.MemoryJob(*reserved)();
    return Created(session, registry_.Commit(std::move(reserved).value(), std::move(memory)));
  }
  // Large: the event loop (and the watchdog) go on while a worker reserves the memory. The
  // connection reads nothing more until the reply, so its requests keep their order.
  CreateOffLoop(std::make_shared<PendingCreate>(PendingCreate{std::move(reserved).value()}),
                session.id);
  return Outcome::Deferred();
}

void RequestHandler::CreateOffLoop(std::shared_ptr<PendingCreate> pending, std::uint64_t session) {
  offload_(
      [pending, make = registry_.MemoryJob(pending->reservation)] { pending->memory = make(); },
      [this, pending, session] {
        auto it = sessions_.find(session);
        if (it == sessions_.end()) {  // The client hung up: nobody to give it to.
          registry_.Cancel(pending->reservation);
          return;
        }
        if (!pending->retried && EvictForRetry(pending->memory, pending->reservation.size)) {
          pending->retried = true;
          CreateOffLoop(pending, session);
          return;
        }
        Session& s = *it->second;
        Outcome out = Created(
            s, registry_.Commit(std::move(pending->reservation), std::move(pending->memory)));
        if (out.deferred) return;  // AfterStored completes it.
        if (auto sink = s.sink.lock()) sink->Complete(std::move(out));
      });
}

bool RequestHandler::EvictForRetry(const Result<SegmentMemory>& memory, std::uint64_t size) {
  // The kernel refused the memory (a cgroup limit, the machine) while the pool keeps some: give
  // it back and try once more, rather than refuse a create the pool's memory could serve.
  if (memory.ok() || memory.status().code() != Code::kResourceExhausted) return false;
  if (registry_.pool().bytes() == 0) return false;
  auto released = registry_.pool().Evict(size);
  spdlog::info("warm pool: gave back {} to retry a create of {} the kernel refused",
               HumanBytes(released.bytes), HumanBytes(size));
  return released.bytes > 0;
}

Outcome RequestHandler::Created(Session& session, Result<std::shared_ptr<SegmentEntry>> seg) {
  if (!seg.ok()) {
    if (seg.status().code() == Code::kResourceExhausted || seg.status().code() == Code::kInternal) {
      spdlog::warn("client {}: {}", session.id, seg.status().ToString());
    }
    return Error(seg.status());
  }
  const SegmentEntry& s = **seg;
  // Names and dtypes were validated; escaped all the same, as everything a client chose is. The
  // arguments are built only when the line is logged: this is the hot path.
  if (spdlog::should_log(spdlog::level::info)) {
    spdlog::info("created '{}' {} {} mode {} by uid {} pid {}", Escaped(s.name()),
                 Escaped(s.spec().dtype), HumanBytes(s.nbytes()), ModeString(s.spec().mode),
                 s.uid(), s.creator_pid());
  }
  std::shared_ptr<SegmentEntry> segment = std::move(seg).value();
  Outcome out = AttachReply(session, segment, Access::kReadWrite);
  if (out.reply.code() != wire::OK) {
    registry_.CheckReferences(*segment);  // A refcount segment nobody got goes at once.
    return out;
  }
  Wake(segment->name());
  return AfterStored(session, std::move(out));
}

Outcome RequestHandler::Attach(Session& session, const wire::AttachRequest& req) {
  auto access = AccessFromWire(req.access());
  if (!access.ok()) return Error(access.status());
  if (req.wait_ms() > kMaxWaitMs) {
    return Error(Status::InvalidArgument("a wait of " + std::to_string(req.wait_ms()) +
                                         " ms is longer than the most, a day"));
  }
  if (Status s = MayAttach(session); !s.ok()) return Error(s);
  if (std::uint64_t id = req.attachment_id(); id != 0) {
    // Ids the daemon picks count up from 1 and never reach bit 63.
    if ((id >> 63) == 0 || session.attachments.count(id) != 0) {
      return Error(Status::InvalidArgument("attachment id " + std::to_string(id) +
                                           (id >> 63 ? " is in use" : " lacks bit 63")));
    }
  }
  Result<std::shared_ptr<SegmentEntry>> seg = Status::NotFound("");
  if (req.by_ticket() && req.ticket() != 0) {
    seg = registry_.OpenLent(req.ticket(), *access, session.creds);
    if (!seg.ok() && seg.status().code() == Code::kFailedPrecondition &&
        *access == Access::kReadWrite) {
      // Sealed since the sender pickled a writable view: the receiver has the pre-seal copy
      // (kept while the segment lives), as an attachment made before the seal does. It counts
      // as a reader.
      access = Access::kReadOnly;
      seg = registry_.OpenLent(req.ticket(), *access, session.creds);
    }
    if (!seg.ok() && seg.status().code() == Code::kNotFound) return Wait(session, req, true);
  } else {
    seg = registry_.Open(req.name(), *access, session.creds);
  }
  bool absent = !seg.ok() && seg.status().code() == Code::kNotFound;
  bool unsealed = seg.ok() && req.sealed() && !(*seg)->sealed();
  if ((absent || unsealed) && req.wait_ms() > 0) return Wait(session, req);
  if (!seg.ok()) return Error(seg.status());
  if (unsealed) return Error(Status::FailedPrecondition(Quoted(req.name()) + " is not sealed"));
  if (req.expect_region_id() != 0 && !(*seg)->IsAt(req.expect_region_id(), req.expect_offset())) {
    return Error(Status::NotFound(Quoted(req.name()) +
                                  " is no longer the segment whose bytes the caller reads"));
  }
  if (req.has_owner_uid() && (*seg)->uid() != req.owner_uid()) {
    return Error(Status::PermissionDenied(
        "'" + req.name() + "' is owned by uid " + std::to_string((*seg)->uid()) + ", not uid " +
        std::to_string(req.owner_uid()) + " as the caller requires"));
  }
  // A pipelined attach (an id the client picked) reads through a mapping the client has: no fd.
  Outcome out = AttachReply(session, *seg, *access, req.resend_fd(), req.attachment_id(),
                            req.attachment_id() == 0);
  if (out.reply.code() == wire::OK) {
    registry_.Redeem(req.ticket(), *seg, session.creds.uid, NowUnixNs() + InFlightNs());
  }
  return out;
}

void RequestHandler::WakeTicket(std::uint64_t ticket) {
  auto it = waiting_ticket_.find(ticket);
  if (it == waiting_ticket_.end()) return;
  std::uint64_t id = it->second;
  auto w = waiters_.find(id);
  if (w == waiters_.end()) return;
  wire::AttachRequest req = w->second.request;
  EndWait(id);
  Resume(id, std::move(req));
}

void RequestHandler::Resume(std::uint64_t session, wire::AttachRequest req) {
  auto s = sessions_.find(session);
  if (s == sessions_.end()) return;
  Outcome out = Attach(*s->second, req);
  if (out.deferred) return;
  if (auto sink = s->second->sink.lock()) sink->Complete(std::move(out));
}

Outcome RequestHandler::Wait(Session& session, const wire::AttachRequest& req, bool for_ticket) {
  std::int64_t deadline =
      NowUnixNs() +
      (for_ticket ? kTicketWaitNs : static_cast<std::int64_t>(req.wait_ms()) * 1'000'000);
  EndWait(session.id);
  waiters_[session.id] = Waiter{req, deadline, for_ticket};
  if (for_ticket) {
    waiting_ticket_.insert_or_assign(req.ticket(), session.id);
  } else {
    waiting_for_.emplace(req.name(), session.id);
  }
  wait_deadlines_.emplace(deadline, session.id);
  return Outcome::Deferred();
}

bool RequestHandler::Abandon(Session& session) {
  if (waiters_.count(session.id) == 0) return false;
  EndWait(session.id);
  return true;
}

void RequestHandler::EndWait(std::uint64_t session) {
  auto it = waiters_.find(session);
  if (it == waiters_.end()) return;
  wait_deadlines_.erase({it->second.deadline_unix_ns, session});
  if (it->second.for_ticket) {
    auto t = waiting_ticket_.find(it->second.request.ticket());
    if (t != waiting_ticket_.end() && t->second == session) waiting_ticket_.erase(t);
  }
  auto [first, last] = waiting_for_.equal_range(it->second.request.name());
  for (auto w = first; w != last; ++w) {
    if (w->second == session) {
      waiting_for_.erase(w);
      break;
    }
  }
  waiters_.erase(it);
}

void RequestHandler::Wake(const std::string& name) {
  auto [first, last] = waiting_for_.equal_range(name);
  if (first == last) return;
  std::vector<std::uint64_t> ids;
  for (auto w = first; w != last; ++w) ids.push_back(w->second);
  std::int64_t now = NowUnixNs();
  for (std::uint64_t id : ids) {
    auto w = waiters_.find(id);
    auto s = sessions_.find(id);
    if (w == waiters_.end() || s == sessions_.end()) continue;
    wire::AttachRequest req = w->second.request;
    // What is left of the wait, should it go on (a segment not sealed yet).
    std::int64_t left_ms = (w->second.deadline_unix_ns - now + 999'999) / 1'000'000;
    req.set_wait_ms(static_cast<std::uint64_t>(std::max<std::int64_t>(left_ms, 1)));
    EndWait(id);
    Outcome out = Attach(*s->second, req);
    if (out.deferred) continue;
    if (auto sink = s->second->sink.lock()) sink->Complete(std::move(out));
  }
}

void RequestHandler::Tick() {
  wake_scheduled_ = 0;
  std::int64_t now = NowUnixNs();
  while (!wait_deadlines_.empty() && wait_deadlines_.begin()->first <= now) {
    std::uint64_t id = wait_deadlines_.begin()->second;
    auto w = waiters_.find(id);
    if (w == waiters_.end()) {
      wait_deadlines_.erase(wait_deadlines_.begin());
      continue;
    }
    if (w->second.for_ticket) {  // Never lent (or redeemed already): by name then.
      wire::AttachRequest req = w->second.request;
      req.set_by_ticket(false);
      EndWait(id);
      Resume(id, std::move(req));
      continue;
    }
    const wire::AttachRequest& req = w->second.request;
    Outcome out = Error(Status::DeadlineExceeded(
        Quoted(req.name()) + (req.sealed() ? " was not sealed" : " did not appear") + " within " +
        std::to_string(req.wait_ms()) + " ms"));
    EndWait(id);
    auto s = sessions_.find(id);
    if (s == sessions_.end()) continue;
    if (auto sink = s->second->sink.lock()) sink->Complete(std::move(out));
  }
  Reschedule();
}

void RequestHandler::Reschedule() {
  std::int64_t next = registry_.Expire(NowUnixNs());
  if (!wait_deadlines_.empty() && (next == 0 || wait_deadlines_.begin()->first < next)) {
    next = wait_deadlines_.begin()->first;
  }
  if (next == 0 || !wake_at_ || (wake_scheduled_ != 0 && wake_scheduled_ <= next)) return;
  wake_scheduled_ = next;
  wake_at_(next);
}

Outcome RequestHandler::Seal(Session& session, const wire::SealRequest& req) {
  auto found = registry_.Find(req.name());
  if (found.ok() && (*found)->shared() && (*found)->nbytes() > 0 && !(*found)->sealed()) {
    // Its bytes move to memory of its own: descriptors and an fd store entry, its owner's.
    if (fds_ != nullptr) {
      if (Status s = fds_->MayOpen((*found)->uid(), 2); !s.ok()) return Error(s);
    }
    if (Status s = MayStoreEntries((*found)->uid(), 1); !s.ok()) return Error(s);
  }
  auto seg = registry_.Seal(req.name(), session.creds, session.id);
  if (!seg.ok()) return Error(seg.status());
  spdlog::info("sealed '{}' by uid {} pid {}", Escaped(req.name()), session.creds.uid,
               session.creds.pid);
  Outcome out;
  FillInfo(**seg, out.reply.mutable_stat());
  Wake((*seg)->name());
  return AfterStored(session, std::move(out));
}

Outcome RequestHandler::Ticket(Session& session, const wire::TicketRequest& req) {
  auto it = session.attachments.find(req.attachment_id());
  if (it == session.attachments.end()) {
    return Error(Status::NotFound("no attachment " + std::to_string(req.attachment_id()) +
                                  " on this connection"));
  }
  Status s = registry_.Lend(it->second.segment, req.ticket(), session.creds.uid,
                            NowUnixNs() + InFlightNs());
  if (!s.ok()) return Error(s);
  WakeTicket(req.ticket());
  Outcome out;
  out.reply.mutable_empty();
  return out;
}

Outcome RequestHandler::Detach(Session& session, const wire::DetachRequest& req) {
  if (req.released_region_id() != 0) session.regions_sent.erase(req.released_region_id());
  if (req.attachment_id() == 0 && req.released_region_id() != 0) {
    Outcome out;  // Only the region: a client that unmapped it without an attachment to end.
    out.reply.mutable_empty();
    return out;
  }
  auto it = session.attachments.find(req.attachment_id());
  if (it == session.attachments.end()) {
    return Error(Status::NotFound("no attachment " + std::to_string(req.attachment_id()) +
                                  " on this connection"));
  }
  registry_.Detach(*it->second.segment, session.id, it->second.access);
  session.attachments.erase(it);
  Unattached(session.creds.uid, 1);
  Outcome out;
  out.reply.mutable_empty();
  return out;
}

Outcome RequestHandler::Unlink(Session& session, const wire::UnlinkRequest& req) {
  if (Status s = registry_.Unlink(req.name(), session.creds); !s.ok()) return Error(s);
  if (spdlog::should_log(spdlog::level::info)) {
    spdlog::info("unlinked '{}' by uid {} pid {}", Escaped(req.name()), session.creds.uid,
                 session.creds.pid);
  }
  Outcome out;
  out.reply.mutable_empty();
  return AfterStored(session, std::move(out));
}

Status RequestHandler::MayStoreEntries(std::uint32_t uid, std::size_t n, std::size_t record_bytes) {
  if (!may_store_) return Status::Ok();
  Status s = may_store_(uid, n, record_bytes);
  if (!s.ok()) registry_.refusals().Count(Limit::kFdStore);
  return s;
}

Outcome RequestHandler::AfterStored(Session& session, Outcome out) {
  if (!when_stored_) return out;
  // Copyable for std::function: the outcome rides in a shared_ptr.
  auto held = std::make_shared<Outcome>(std::move(out));
  bool waits = when_stored_([sink = session.sink, held] {
    if (auto s = sink.lock()) s->Complete(std::move(*held));  // Gone: the client hung up.
  });
  return waits ? Outcome::Deferred() : std::move(*held);
}

Outcome RequestHandler::Stat(Session&, const wire::StatRequest& req) {
  auto seg = registry_.Find(req.name());
  if (!seg.ok()) return Error(seg.status());
  Outcome out;
  FillInfo(**seg, out.reply.mutable_stat());
  FillHolders(**seg, out.reply.mutable_stat());
  return out;
}

Outcome RequestHandler::List(Session&, const wire::ListRequest& req) {
  Outcome out;
  auto* list = out.reply.mutable_list();
  std::size_t bytes = 0;
  // Adds `seg` to the page (an unlinked one with its holders); false when the page is full.
  auto add = [&](const SegmentEntry& seg, bool unlinked) {
    if (bytes >= kListPageBytes) {
      list->set_truncated(true);
      return false;
    }
    auto* info = list->add_segments();
    FillInfo(seg, info);
    if (unlinked) {
      FillHolders(seg, info);
      info->set_unlinked(true);
    }
    bytes += info->ByteSizeLong() + 8;
    return true;
  };
  ScanBudget budget;
  if (req.unlinked()) {
    std::uint64_t last = 0;
    std::uint64_t scanned_to = 0;
    Status s = registry_.ForEachUnlinked(
        req.pattern(), req.start_after_id(),
        [&](const SegmentEntry& seg) {
          if (!add(seg, /*unlinked=*/true)) {
            list->set_next_after_id(last);
            return false;
          }
          last = seg.id();
          return true;
        },
        &budget, &scanned_to);
    if (!s.ok()) return Error(s);
    if (scanned_to != 0) {  // Out of budget: the client goes on from there.
      list->set_truncated(true);
      list->set_next_after_id(scanned_to);
      out.yield = true;
    }
    return out;
  }
  std::string next_after;
  Status s = registry_.List(
      req.pattern(), req.start_after(),
      [&](const SegmentEntry& seg) {
        if (!add(seg, /*unlinked=*/false)) {
          list->set_next_after(list->segments(list->segments_size() - 1).name());
          return false;
        }
        return true;
      },
      &budget, &next_after);
  if (!s.ok()) return Error(s);
  if (!next_after.empty()) {
    list->set_truncated(true);
    list->set_next_after(next_after);
    out.yield = true;
  }
  return out;
}

Outcome RequestHandler::Stats(Session&) {
  Outcome out;
  auto* r = out.reply.mutable_stats();
  r->set_server_version(info_.version);
  r->set_server_pid(static_cast<std::uint32_t>(::getpid()));
  r->set_started_unix_ns(info_.started_unix_ns);
  r->set_socket_path(info_.socket_path);
  r->set_segments(registry_.size());
  r->set_bytes_held(registry_.bytes_held());
  r->set_max_memory(registry_.max_memory());
  r->set_clients(clients_);
  r->set_unlinked_segments(registry_.unlinked_in_use().segments);
  r->set_unlinked_bytes(registry_.unlinked_in_use().bytes);
  r->set_log_lines_dropped(LogLinesDropped());
  Arena::Totals arena = registry_.arena().totals();
  r->set_shared_regions(arena.regions);
  r->set_shared_region_resident_bytes(arena.resident);
  r->set_shared_region_free_bytes(arena.resident - std::min(arena.resident, arena.allocated));
  r->set_huge_page_bytes(Region::huge_bytes_total());
  for (int cause = 0; cause < 3; ++cause) {
    auto* c = r->add_auto_unlinked();
    c->set_name(std::string(Registry::kAutoCauseNames[cause]));
    c->set_value(registry_.auto_unlinked(static_cast<Registry::AutoCause>(cause)));
  }
  r->set_tickets_in_flight(registry_.tickets_in_flight());
  r->set_tickets_lapsed(registry_.tickets_lapsed());
  r->set_waiters(static_cast<std::uint32_t>(waiters_.size()));
  for (std::size_t i = 0; i < Refusals::kNames.size(); ++i) {
    auto* c = r->add_refusals();
    c->set_name(std::string(Refusals::kNames[i]));
    c->set_value(registry_.refusals()[i]);
  }
  const WarmPool& pool = registry_.pool();
  r->set_pool_bytes(pool.bytes());
  r->set_pool_segments(pool.segments());
  r->set_pool_max_bytes(pool.max_bytes());
  r->set_pool_reused(pool.reused());
  r->set_pool_released_bytes(pool.released_bytes());
  auto* l = r->mutable_limits();
  l->set_max_memory_per_user(limits_.max_memory_per_user);
  l->set_max_segments_per_user(limits_.max_segments_per_user);
  l->set_max_connections(limits_.max_connections);
  l->set_max_connections_per_user(limits_.max_connections_per_user);
  l->set_max_attachments_per_connection(limits_.max_attachments_per_connection);
  l->set_handshake_timeout_ms(static_cast<std::uint64_t>(limits_.handshake_timeout.count()));
  if (fds_ != nullptr) {
    l->set_fd_limit(fds_->limit());
    l->set_fd_reserve(fds_->reserve());
  }
  for (int op = wire::Request::kHello; op <= wire::Request::kTrim; ++op) {
    auto* c = r->add_requests();
    c->set_name(std::string(kOpNames[op]));
    c->set_value(requests_[op]);
  }
  for (int code = 1; code <= kMaxCode; ++code) {
    auto* c = r->add_errors();
    c->set_name(std::string(CodeName(static_cast<Code>(code))));
    c->set_value(errors_[code]);
  }
  return out;
}

Outcome RequestHandler::Trim(Session& session) {
  // The pool is the daemon's: root and the daemon's own user trim all of it; anyone else only
  // what is kept for their own segments (the rest is not theirs to give back).
  bool everything = session.creds.uid == 0 || session.creds.uid == ::getuid();
  WarmPool::Released released = registry_.Trim(session.creds.uid, everything);
  spdlog::info("trim by uid {} pid {}: released {} of the warm pool", session.creds.uid,
               session.creds.pid, HumanBytes(released.bytes));
  Outcome out;
  auto* r = out.reply.mutable_trim();
  r->set_bytes_released(released.bytes);
  r->set_segments_released(released.segments);
  return out;
}

Outcome RequestHandler::Purge(Session& session, const wire::PurgeRequest& req) {
  ScanBudget budget;
  auto result = registry_.Purge(SelectorFromWire(req), session.creds, req.dry_run(),
                                req.start_after(), &budget);
  if (!result.ok()) return Error(result.status());
  Outcome out;
  auto* r = out.reply.mutable_purge();
  if (!result->next_after.empty()) {
    r->set_next_after(result->next_after);
    out.yield = true;
  }
  r->set_removed_count(result->removed.size());
  r->set_bytes_freed(result->bytes_freed);
  r->set_skipped_not_owner(result->skipped_not_owner);
  // One line per purge, however many segments and slices: summed over the slices, logged when
  // the last one is done.
  if (req.start_after().empty()) session.purged = {};
  if (!req.dry_run()) {
    session.purged.segments += result->removed.size();
    session.purged.bytes += result->bytes_freed;
  }
  if (result->next_after.empty() && session.purged.segments > 0) {
    spdlog::info("purged {} segment{} ({}) by uid {} pid {}", session.purged.segments,
                 session.purged.segments == 1 ? "" : "s", HumanBytes(session.purged.bytes),
                 session.creds.uid, session.creds.pid);
    session.purged = {};
  }
  std::size_t bytes = 0;
  for (const auto& seg : result->removed) {
    if (bytes >= kListPageBytes) {
      r->set_truncated(true);
      continue;
    }
    auto* p = r->add_removed();
    p->set_name(seg->name());
    p->set_nbytes(seg->nbytes());
    p->set_uid(seg->uid());
    bytes += p->ByteSizeLong() + 4;
  }
  if (req.dry_run() || result->removed.empty()) return out;
  return AfterStored(session, std::move(out));
}

}  // namespace shmbroker::daemon
