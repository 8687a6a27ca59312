#include "shmbroker/client.h"

#include <errno.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <random>

#include "client_core.h"
#include "common/map_aligned.h"
#include "common/posix.h"
#include "common/socket_path.h"
#include "common/trust.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

namespace shmbroker {

namespace {

// pid and counter make it unique here; the random part makes it unguessable, so that nobody can
// take the name first.
std::string GeneratedName() {
  static std::atomic<std::uint64_t> counter{0};
  thread_local std::random_device device;  // The kernel's randomness (getrandom).
  std::uint64_t random = (std::uint64_t{device()} << 32 | device()) & 0xffff'ffff'ffffULL;
  char hex[13];
  std::snprintf(hex, sizeof(hex), "%012llx", static_cast<unsigned long long>(random));
  return "auto/" + std::to_string(::getpid()) + "-" + std::to_string(++counter) + "-" + hex;
}

}  // namespace

namespace internal {

constexpr std::uint64_t kPrefaultMinBytes = 256 << 10;

static_assert(static_cast<int>(Code::kInvalidArgument) == wire::INVALID_ARGUMENT &&
                  static_cast<int>(Code::kResourceExhausted) == wire::RESOURCE_EXHAUSTED &&
                  static_cast<int>(Code::kUnavailable) == wire::UNAVAILABLE &&
                  static_cast<int>(Code::kDeadlineExceeded) == wire::DEADLINE_EXCEEDED,
              "shmbroker::Code must match the wire codes");

Region::~Region() {
  if (addr != nullptr) ::munmap(addr, length);
}

ClientCore::ClientCore(UniqueFd sock, std::string path, bool prefault, bool pipeline_releases,
                       bool ahead)
    : sock_(std::move(sock)),
      path_(std::move(path)),
      prefault_(prefault),
      pipeline_releases_(pipeline_releases),
      ahead_(ahead),
      buffer_(wire::kMaxReplyBytes + 1) {}

Status ClientCore::Broken(const std::string& what) {
  broken_ = true;
  return Status::Unavailable(what + " (shmbrokerd at '" + path_ + "')");
}

Result<wire::Reply> ClientCore::Call(const wire::Request& request, wire::Reply::BodyCase expected,
                                     std::vector<UniqueFd>* fds) {
  std::lock_guard lock(mu_);
  return CallLocked(request, expected, fds);
}

Status ClientCore::DrainLocked() {
  while (!unread_.empty()) {
    wire::RecvResult r = wire::RecvPacket(sock_.get(), buffer_, /*nonblocking=*/false);
    if (r.status == wire::RecvStatus::kClosed) return Broken("the daemon closed the connection");
    if (r.status != wire::RecvStatus::kOk) {
      return Broken(std::string("cannot receive from the daemon: ") + std::strerror(r.error));
    }
    std::uint64_t seq = unread_.front();
    unread_.pop_front();
    if (seq != 0) SpareArrivedLocked(seq, r);
  }
  return Status::Ok();
}

Result<wire::Reply> ClientCore::CallLocked(const wire::Request& request,
                                           wire::Reply::BodyCase expected,
                                           std::vector<UniqueFd>* fds) {
  if (broken_)
    return Status::Unavailable("the connection to shmbrokerd at '" + path_ + "' was lost");
  std::string bytes;
  if (!request.SerializeToString(&bytes)) return Status::Internal("cannot serialize a request");
  if (bytes.size() > wire::kMaxRequestBytes) {
    return Status::InvalidArgument("request of " + std::to_string(bytes.size()) +
                                   " bytes exceeds the protocol's " +
                                   std::to_string(wire::kMaxRequestBytes));
  }
  // Packets due first, then every reply due (this request's must be the next to come): a
  // spare's may queue a release, which then rides on this request.
  if (Status s = SendUnlinksLocked(); !s.ok()) return s;
  if (Status s = DrainLocked(); !s.ok()) return s;
  if (!queued_.empty() && !RideLocked(bytes)) {
    if (Status s = SendQueuedLocked(); !s.ok()) return s;
    if (Status s = DrainLocked(); !s.ok()) return s;
  }
  if (int err = wire::SendPacket(sock_.get(), std::as_bytes(std::span(bytes)), {}, false)) {
    // A daemon that refuses a connection (too many, no descriptors left) says why and closes,
    // maybe before our first request left: its reason is then waiting to be read.
    wire::RecvResult early = wire::RecvPacket(sock_.get(), buffer_, /*nonblocking=*/true);
    wire::Reply why;
    if (early.status == wire::RecvStatus::kOk &&
        why.ParseFromArray(buffer_.data(), static_cast<int>(early.size)) &&
        why.code() != wire::OK && why.code() <= kMaxCode) {
      broken_ = true;
      return Status(static_cast<Code>(why.code()), why.message());
    }
    return Broken(std::string("cannot send to the daemon: ") + std::strerror(err));
  }
  wire::RecvResult r = wire::RecvPacket(sock_.get(), buffer_, /*nonblocking=*/false);
  switch (r.status) {
    case wire::RecvStatus::kOk:
      break;
    case wire::RecvStatus::kClosed:
      return Broken("the daemon closed the connection");
    case wire::RecvStatus::kTruncated:
      broken_ = true;
      return Status::ProtocolError("a reply from the daemon did not fit");
    default:
      return Broken(std::string("cannot receive from the daemon: ") + std::strerror(r.error));
  }
  wire::Reply reply;
  if (!reply.ParseFromArray(buffer_.data(), static_cast<int>(r.size))) {
    broken_ = true;
    return Status::ProtocolError("the daemon's reply could not be parsed");
  }
  int code = reply.code();
  if (code < 0 || code > kMaxCode) {
    return Status::ProtocolError("unknown status code " + std::to_string(code) + ": " +
                                 reply.message());
  }
  if (code != wire::OK) return Status(static_cast<Code>(code), reply.message());
  if (reply.body_case() != expected) {
    return Status::ProtocolError("the daemon answered with an unexpected reply");
  }
  if (fds != nullptr) {
    *fds = std::move(r.fds);
  } else if (!r.fds.empty()) {
    return Status::ProtocolError("the daemon sent descriptors with a reply that takes none");
  }
  return reply;
}

Status ClientCore::Handshake(const std::string& client_name) {
  wire::Request req;
  req.mutable_hello()->set_protocol_version(wire::PROTOCOL_VERSION_CURRENT);
  req.mutable_hello()->set_client_name(client_name);
  auto reply = Call(req, wire::Reply::kHello);
  if (!reply.ok()) return reply.status();
  const auto& h = reply->hello();
  server_.protocol_version = h.protocol_version();
  server_.version = h.server_version();
  server_.pid = h.server_pid();
  server_.max_memory = h.limits().max_memory();
  server_.max_name_bytes = h.limits().max_name_bytes();
  server_.max_dims = h.limits().max_dims();
  server_.max_attrs = h.limits().max_attrs();
  return Status::Ok();
}

SegmentInfo FromWire(const wire::SegmentInfo& w) {
  SegmentInfo info;
  info.name = w.name();
  info.dtype = w.dtype();
  info.shape.assign(w.shape().begin(), w.shape().end());
  info.order = w.order() == wire::ORDER_F ? Order::kF : Order::kC;
  info.nbytes = w.nbytes();
  info.attrs.insert(w.attrs().begin(), w.attrs().end());
  info.uid = w.uid();
  info.gid = w.gid();
  info.creator_pid = w.creator_pid();
  info.created = std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          std::chrono::nanoseconds(w.created_unix_ns())));
  info.mode = w.mode();
  info.attachments = w.attachments();
  info.creator_connected = w.creator_connected();
  for (const auto& h : w.holders()) {
    info.holders.push_back({h.pid(), h.uid(), h.client_name(), h.attachments(), h.writable()});
  }
  info.holders_truncated = w.holders_truncated();
  info.unlinked = w.unlinked();
  info.lifetime = static_cast<Lifetime>(w.lifetime());
  if (w.expires_unix_ns() != 0) {
    info.expires = std::chrono::system_clock::time_point(
        std::chrono::duration_cast<std::chrono::system_clock::duration>(
            std::chrono::nanoseconds(w.expires_unix_ns())));
  }
  info.sealed = w.sealed();
  info.in_flight = w.in_flight();
  return info;
}

Result<Segment> ClientCore::Map(const wire::Request& request, std::optional<bool> prefault) {
  std::lock_guard lock(mu_);
  std::vector<UniqueFd> fds;
  auto reply = CallLocked(request, wire::Reply::kAttach, &fds);
  if (!reply.ok()) return reply.status();
  return MaterializeLocked(*reply, std::move(fds), prefault, /*wait_on_failure=*/true);
}

Result<Segment> ClientCore::MaterializeLocked(const wire::Reply& reply, std::vector<UniqueFd> fds,
                                              std::optional<bool> prefault, bool wait_on_failure) {
  const wire::AttachReply& a = reply.attach();
  const wire::Mapping& m = a.mapping();
  // The daemon counts the attachment from here on: a failure below must give it back (and the
  // region, if its fd came with this reply) before returning.
  auto fail = [&](Status status) -> Status {
    std::uint64_t region = m.fd_attached() ? m.region_id() : 0;
    if (!wait_on_failure) {
      queued_.emplace_back(a.attachment_id(), region);
      return status;
    }
    wire::Request detach;
    detach.mutable_detach()->set_attachment_id(a.attachment_id());
    detach.mutable_detach()->set_released_region_id(region);
    (void)CallLocked(detach, wire::Reply::kEmpty, nullptr);
    return status;
  };
  Segment seg;
  seg.info_ = FromWire(a.info());
  seg.attachment_id_ = a.attachment_id();
  seg.access_ = m.access() == wire::READ_WRITE ? Access::kReadWrite : Access::kReadOnly;
  if (m.length() != seg.info_.nbytes || m.offset() > m.region_size() ||
      m.length() > m.region_size() - m.offset()) {
    return fail(
        Status::ProtocolError("the daemon described a mapping that does not fit its region"));
  }
  if (m.length() > 0 && m.fd_attached()) {
    if (fds.size() != 1)
      return fail(Status::ProtocolError("expected one descriptor with the reply"));
    bool rw = seg.access_ == Access::kReadWrite;
    std::size_t len = static_cast<std::size_t>(m.region_size());
    // 2 MiB-aligned: where the daemon backed the region with 2 MiB pages, the kernel maps them
    // whole only at such an address.
    void* addr = MapAligned(fds[0].get(), len, PROT_READ | (rw ? PROT_WRITE : 0), 2 << 20);
    if (addr == MAP_FAILED) {
      int err = errno;
      return fail(Status(err == ENOMEM ? Code::kResourceExhausted : Code::kInternal,
                         "cannot map segment '" + seg.info_.name + "': " + std::strerror(err)));
    }
    fds.clear();  // The mapping keeps the memory; the descriptor is not needed any more.
    seg.region_ = std::make_shared<Region>(m.region_id(), addr, len);
    regions_[m.region_id()] = seg.region_;
    if (m.shared()) kept_[m.region_id()] = seg.region_;
  } else if (m.length() > 0) {
    if (!fds.empty()) return fail(Status::ProtocolError("unexpected descriptor with the reply"));
    auto it = regions_.find(m.region_id());
    if (it != regions_.end()) seg.region_ = it->second.lock();
    if (!seg.region_) {
      return fail(Status::ProtocolError("the daemon did not send region " +
                                        std::to_string(m.region_id()) +
                                        ", which is not mapped here"));
    }
  }
  if (seg.region_) {
    seg.data_ = static_cast<std::byte*>(seg.region_->addr) + m.offset();
    // The segment's pages only: a shared region's other pages may be holes, not reserved for us.
    // Below a few pages a syscall costs more than the faults it saves.
    if (prefault.value_or(prefault_) && m.length() >= kPrefaultMinBytes) {
      static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
      auto begin = reinterpret_cast<std::uintptr_t>(seg.data_) & ~(page - 1);
      auto end = reinterpret_cast<std::uintptr_t>(seg.data_) + m.length();
      // Best effort: old kernels say EINVAL, and the pages are reserved already.
      ::madvise(reinterpret_cast<void*>(begin), end - begin,
                seg.access_ == Access::kReadWrite ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
    }
  }
  seg.core_ = shared_from_this();  // From here on, ~Segment detaches.
  return seg;
}

std::pair<std::uint64_t, std::uint64_t> ClientCore::ReleaseOfLocked(Segment& segment) {
  std::uint64_t region = 0;
  if (segment.region_) {
    std::uint64_t id = segment.region_->id;
    segment.region_.reset();
    auto it = regions_.find(id);
    if (it != regions_.end() && it->second.expired()) {
      regions_.erase(it);
      region = id;
    }
  }
  return {segment.attachment_id_, region};
}

Status ClientCore::Release(Segment& segment, bool wait) {
  std::lock_guard lock(mu_);
  auto [attachment, region] = ReleaseOfLocked(segment);
  if (wait) {
    wire::Request req;
    req.mutable_detach()->set_attachment_id(attachment);
    req.mutable_detach()->set_released_region_id(region);
    return CallLocked(req, wire::Reply::kEmpty, nullptr).status();
  }
  if (broken_) return Status::Unavailable("the connection was lost");
  queued_.emplace_back(attachment, region);
  if (client_gone_ || queued_.size() >= kRide) return SendQueuedLocked();
  return Status::Ok();
}

Result<Segment> ClientCore::CreateAhead(const wire::Request& request, std::optional<bool> prefault,
                                        std::string next_name) {
  wire::Request next = request;
  next.mutable_create()->set_name(std::move(next_name));
  wire::CreateRequest kind = request.create();
  kind.clear_name();
  std::string key = kind.SerializeAsString() + (prefault.value_or(prefault_) ? 'p' : '-');

  std::lock_guard lock(mu_);
  // A spare was the daemon's that is gone: nobody's segment now.
  if (broken_)
    return Status::Unavailable("the connection to shmbrokerd at '" + path_ + "' was lost");
  std::optional<Segment> seg;
  auto spare =
      std::find_if(spares_.begin(), spares_.end(), [&](const Spare& s) { return s.key == key; });
  if (spare != spares_.end()) {
    if (!spare->segment && !unread_.empty()) {
      // Its reply is due: it came long ago, or comes at once.
      if (Status s = DrainLocked(); !s.ok()) return s;
      spare = std::find_if(spares_.begin(), spares_.end(),
                           [&](const Spare& s) { return s.key == key; });
    }
    if (spare != spares_.end() && spare->segment) {
      seg = std::move(spare->segment);
      seg->core_ = shared_from_this();
      spares_.erase(spare);
    }
  }
  if (!seg) {
    std::vector<UniqueFd> fds;
    auto reply = CallLocked(request, wire::Reply::kAttach, &fds);
    if (!reply.ok() && reply.status().code() == Code::kResourceExhausted && !spares_.empty()) {
      // The spares' memory goes back first (their releases ride on the retry), those still in
      // flight once their replies are read.
      if (Status s = DrainLocked(); !s.ok()) return s;
      while (!spares_.empty()) DropSpareLocked(0);
      reply = CallLocked(request, wire::Reply::kAttach, &fds);
    }
    if (!reply.ok()) return reply.status();
    auto made = MaterializeLocked(*reply, std::move(fds), prefault, /*wait_on_failure=*/true);
    if (!made.ok()) return made.status();
    seg = std::move(made).value();
  }
  // Only blocks of shared regions: a spare of a large segment would hold a region of its own.
  if (seg->region_ && kept_.count(seg->region_->id) != 0 && !broken_) {
    while (spares_.size() >= kSpares) DropSpareLocked(0);
    Status sent = SendUnlinksLocked();
    if (sent.ok()) sent = SendPipelinedLocked(next.SerializeAsString(), ++next_spare_);
    if (!sent.ok() && broken_) {
      // The daemon is gone, and with it what was taken (a spare's segment, perhaps read from
      // the socket after it died). Released here: its ~Segment must not lock mu_ again.
      seg->core_.reset();
      (void)ReleaseOfLocked(*seg);
      return sent;
    }
    if (sent.ok()) {
      spares_.push_back({.key = std::move(key),
                         .seq = next_spare_,
                         .prefault = prefault.value_or(prefault_),
                         .name = next.create().name(),
                         .connection = next.create().lifetime() == wire::CONNECTION});
    }
  }
  return std::move(seg).value();
}

void ClientCore::SpareArrivedLocked(std::uint64_t seq, wire::RecvResult& packet) {
  auto spare =
      std::find_if(spares_.begin(), spares_.end(), [&](const Spare& s) { return s.seq == seq; });
  wire::Reply reply;
  bool ok = reply.ParseFromArray(buffer_.data(), static_cast<int>(packet.size)) &&
            reply.code() == wire::OK && reply.body_case() == wire::Reply::kAttach;
  std::vector<UniqueFd> fds = std::move(packet.fds);
  if (!ok) {  // No spare: the next create of its kind waits, as without one.
    if (spare != spares_.end()) spares_.erase(spare);
    return;
  }
  // Mapped now even if no longer wanted: a later reply may count on its region being mapped.
  std::optional<bool> prefault;
  if (spare != spares_.end()) prefault = spare->prefault;
  auto made = MaterializeLocked(reply, std::move(fds), prefault, /*wait_on_failure=*/false);
  if (!made.ok()) {
    if (spare != spares_.end()) spares_.erase(spare);
    return;
  }
  made->core_.reset();  // Kept here, it must not keep this core alive.
  if (spare != spares_.end()) {
    spare->segment = std::move(made).value();
  } else {
    queued_.push_back(ReleaseOfLocked(*made));
  }
}

void ClientCore::DropSpareLocked(std::size_t i) {
  Spare& spare = spares_[i];
  if (spare.segment) queued_.push_back(ReleaseOfLocked(*spare.segment));
  // One still in flight is released when its reply arrives and finds no spare waiting; its
  // unlink follows its create on this connection, so the daemon sees them in that order.
  if (spare.connection) unlinks_.push_back(std::move(spare.name));
  spares_.erase(spares_.begin() + static_cast<std::ptrdiff_t>(i));
}

Status ClientCore::SendUnlinksLocked() {
  while (!unlinks_.empty() && !broken_) {
    wire::Request req;
    req.mutable_unlink()->set_name(std::move(unlinks_.back()));
    unlinks_.pop_back();
    if (Status s = SendPipelinedLocked(req.SerializeAsString(), 0); !s.ok()) return s;
  }
  return Status::Ok();
}

Status ClientCore::SendPipelinedLocked(std::string bytes, std::uint64_t spare) {
  if (unread_.size() >= kPipeline) {
    if (Status s = DrainLocked(); !s.ok()) return s;
  }
  if (!queued_.empty()) (void)RideLocked(bytes);  // else they ride on the next
  if (int err = wire::SendPacket(sock_.get(), std::as_bytes(std::span(bytes)), {}, false)) {
    return Broken(std::string("cannot send to the daemon: ") + std::strerror(err));
  }
  unread_.push_back(spare);
  return Status::Ok();
}

bool ClientCore::RideLocked(std::string& bytes) {
  wire::Request ride;
  for (auto [attachment, region] : queued_) {
    auto* r = ride.add_releases();
    r->set_attachment_id(attachment);
    r->set_released_region_id(region);
  }
  // Serialized messages concatenate as a merge: the repeated field gathers these releases.
  if (bytes.size() + ride.ByteSizeLong() > wire::kMaxRequestBytes) return false;
  ride.AppendToString(&bytes);
  queued_.clear();
  return true;
}

Status ClientCore::SendQueuedLocked() {
  if (queued_.empty()) return Status::Ok();
  // A detach of the first, the rest riding on it: within a packet, as at most kRide are queued.
  // (A drain before the send may queue more; they ride too, or on the next request.)
  wire::Request req;
  req.mutable_detach()->set_attachment_id(queued_.front().first);
  req.mutable_detach()->set_released_region_id(queued_.front().second);
  queued_.erase(queued_.begin());
  return SendPipelinedLocked(req.SerializeAsString(), 0);
}

Status ClientCore::Flush() {
  std::lock_guard lock(mu_);
  if (broken_)
    return Status::Unavailable("the connection to shmbrokerd at '" + path_ + "' was lost");
  if (Status s = SendUnlinksLocked(); !s.ok()) return s;
  if (Status s = SendQueuedLocked(); !s.ok()) return s;
  return DrainLocked();
}

void ClientCore::ClientGone() {
  std::lock_guard lock(mu_);
  client_gone_ = true;
  // Spares still in flight are given back too: read their replies first (due at once). The
  // daemon holds a block attached at disconnect until the process exits, as it may be mapped.
  if (!broken_ && !unread_.empty()) (void)DrainLocked();
  while (!spares_.empty()) DropSpareLocked(0);
  if (!broken_) (void)SendUnlinksLocked();
  if (!broken_) (void)SendQueuedLocked();
}

}  // namespace internal

// --- Segment ---------------------------------------------------------------------------------

Segment::Segment(Segment&& o) noexcept
    : core_(std::move(o.core_)),
      region_(std::move(o.region_)),
      data_(std::exchange(o.data_, nullptr)),
      info_(std::move(o.info_)),
      attachment_id_(std::exchange(o.attachment_id_, 0)),
      access_(o.access_) {}

Segment& Segment::operator=(Segment&& o) noexcept {
  if (this != &o) {
    (void)Release(/*wait=*/core_ && !core_->pipeline_releases());
    core_ = std::move(o.core_);
    region_ = std::move(o.region_);
    data_ = std::exchange(o.data_, nullptr);
    info_ = std::move(o.info_);
    attachment_id_ = std::exchange(o.attachment_id_, 0);
    access_ = o.access_;
  }
  return *this;
}

Segment::~Segment() { (void)Release(/*wait=*/core_ && !core_->pipeline_releases()); }

Status Segment::Detach() { return Release(/*wait=*/true); }

Status Segment::Release(bool wait) {
  if (!core_) return Status::Ok();
  auto core = std::move(core_);
  Status s = core->Release(*this, wait);
  region_.reset();
  data_ = nullptr;
  attachment_id_ = 0;
  return s;
}

Result<std::span<std::byte>> Segment::mutable_bytes() {
  if (Status s = CheckView("", true, 1); !s.ok()) return s;
  return std::span<std::byte>(data_, size_bytes());
}

Status Segment::CheckView(std::string_view dtype, bool write, std::size_t elem_size) const {
  if (!valid()) return Status::FailedPrecondition("the segment is not attached");
  if (write && access_ != Access::kReadWrite) {
    return Status::FailedPrecondition("segment '" + name() + "' is attached read-only");
  }
  if (!dtype.empty() && dtype != info_.dtype) {
    return Status::FailedPrecondition("segment '" + name() + "' has dtype '" + info_.dtype +
                                      "', not '" + std::string(dtype) + "'");
  }
  if (elem_size == 0 || size_bytes() % elem_size != 0) {
    return Status::FailedPrecondition("segment '" + name() +
                                      "' size is not a multiple of the element");
  }
  return Status::Ok();
}

// --- Client ----------------------------------------------------------------------------------

Client::Client(std::shared_ptr<internal::ClientCore> core) : core_(std::move(core)) {}
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&& o) noexcept {
  if (this != &o) {
    if (core_) core_->ClientGone();
    core_ = std::move(o.core_);
  }
  return *this;
}
Client::~Client() {
  if (core_) core_->ClientGone();
}

Result<Client> Client::Connect(const ClientOptions& options) {
  std::string path = ResolveSocketPath(options.socket_path);
  if (Status s = MakeUnixAddress(path).status(); !s.ok()) return s;
  ConnectError error;
  std::optional<UniqueFd> fd = ConnectSeqPacket(path, &error);
  if (!fd) {
    return Status::Unavailable("no shmbrokerd answers at '" + path +
                               "': " + std::strerror(error.error) +
                               " (is the daemon running? see --socket / $SHMBROKER_SOCKET)");
  }
  // Before a byte goes out: a daemon run by someone else would learn the client's name and
  // receive its data.
  Result<std::optional<uid_t>> trusted = TrustedUid(options.trusted_uid);
  if (!trusted.ok()) return trusted.status();
  if (Status s = CheckDaemonTrusted(fd->get(), path, *trusted); !s.ok()) return s;
  auto core = std::make_shared<internal::ClientCore>(std::move(*fd), path, options.prefault,
                                                     options.pipeline_releases, options.ahead);
  std::string name = options.client_name.empty()
                         ? std::string("cpp:") + program_invocation_short_name
                         : options.client_name;
  if (Status s = core->Handshake(name); !s.ok()) return s;
  return Client(std::move(core));
}

Result<Segment> Client::Create(const CreateOptions& o) {
  wire::Request req;
  auto* c = req.mutable_create();
  c->set_name(o.name.empty() ? GeneratedName() : o.name);
  c->set_dtype(o.dtype);
  for (auto d : o.shape) c->add_shape(d);
  c->set_order(o.order == Order::kF ? wire::ORDER_F : wire::ORDER_C);
  c->set_mode(o.mode);
  c->mutable_attrs()->insert(o.attrs.begin(), o.attrs.end());
  c->set_lifetime(static_cast<wire::Lifetime>(static_cast<int>(o.lifetime)));
  if (o.ttl) {
    if (o.ttl->count() <= 0) return Status::InvalidArgument("a ttl must be positive");
    c->set_ttl_ms(static_cast<std::uint64_t>(o.ttl->count()));
  }
  if (core_->ahead() && o.name.empty() && o.lifetime != Lifetime::kPersistent && !o.ttl &&
      o.attrs.empty()) {
    return core_->CreateAhead(req, o.prefault, GeneratedName());
  }
  return core_->Map(req, o.prefault);
}

Result<Segment> Client::Attach(std::string_view name, Access access) {
  return Attach(name, AttachOptions{.access = access});
}

Result<Segment> Client::Attach(std::string_view name, const AttachOptions& o) {
  wire::Request req;
  req.mutable_attach()->set_name(std::string(name));
  req.mutable_attach()->set_access(o.access == Access::kReadWrite ? wire::READ_WRITE
                                                                  : wire::READ_ONLY);
  if (o.owner_uid) req.mutable_attach()->set_owner_uid(*o.owner_uid);
  if (o.wait) {
    if (o.wait->count() < 0) return Status::InvalidArgument("a wait cannot be negative");
    req.mutable_attach()->set_wait_ms(static_cast<std::uint64_t>(o.wait->count()));
  }
  req.mutable_attach()->set_sealed(o.sealed);
  return core_->Map(req, o.prefault);
}

Status Client::Flush() { return core_->Flush(); }

Result<SegmentInfo> Client::Seal(std::string_view name) {
  wire::Request req;
  req.mutable_seal()->set_name(std::string(name));
  auto reply = core_->Call(req, wire::Reply::kStat);
  if (!reply.ok()) return reply.status();
  return internal::FromWire(reply->stat());
}

Status Client::Unlink(std::string_view name) {
  wire::Request req;
  req.mutable_unlink()->set_name(std::string(name));
  return core_->Call(req, wire::Reply::kEmpty).status();
}

Result<SegmentInfo> Client::Stat(std::string_view name) {
  wire::Request req;
  req.mutable_stat()->set_name(std::string(name));
  auto reply = core_->Call(req, wire::Reply::kStat);
  if (!reply.ok()) return reply.status();
  return internal::FromWire(reply->stat());
}

Result<std::vector<SegmentInfo>> Client::List(std::string_view pattern) {
  std::vector<SegmentInfo> out;
  wire::Request req;
  req.mutable_list()->set_pattern(std::string(pattern));
  for (;;) {
    auto reply = core_->Call(req, wire::Reply::kList);
    if (!reply.ok()) return reply.status();
    const auto& list = reply->list();
    for (const auto& s : list.segments()) out.push_back(internal::FromWire(s));
    if (!list.truncated()) break;
    // The daemon stops a page when it is full or its scan budget is spent; it always moves on.
    std::string next = !list.next_after().empty() ? list.next_after()
                       : !out.empty()             ? out.back().name
                                                  : std::string();
    if (next.empty() || next <= req.list().start_after()) break;
    req.mutable_list()->set_start_after(next);
  }
  return out;
}

Result<std::vector<SegmentInfo>> Client::ListUnlinked(std::string_view pattern) {
  wire::Request req;
  req.mutable_list()->set_pattern(std::string(pattern));
  req.mutable_list()->set_unlinked(true);
  std::vector<SegmentInfo> out;
  for (;;) {
    auto reply = core_->Call(req, wire::Reply::kList);
    if (!reply.ok()) return reply.status();
    const auto& list = reply->list();
    for (const auto& s : list.segments()) out.push_back(internal::FromWire(s));
    // Ids only grow: a daemon that does not move on (an older one sends no id) ends the loop.
    if (!list.truncated() || list.next_after_id() <= req.list().start_after_id()) break;
    req.mutable_list()->set_start_after_id(list.next_after_id());
  }
  return out;
}

Result<DaemonStats> Client::Stats() {
  wire::Request req;
  req.mutable_stats();
  auto reply = core_->Call(req, wire::Reply::kStats);
  if (!reply.ok()) return reply.status();
  const auto& s = reply->stats();
  DaemonStats d;
  d.version = s.server_version();
  d.pid = s.server_pid();
  d.started = std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          std::chrono::nanoseconds(s.started_unix_ns())));
  d.socket_path = s.socket_path();
  d.segments = s.segments();
  d.bytes_held = s.bytes_held();
  d.max_memory = s.max_memory();
  d.clients = s.clients();
  for (const auto& c : s.requests()) d.requests[c.name()] = c.value();
  for (const auto& c : s.errors()) d.errors[c.name()] = c.value();
  d.unlinked_segments = s.unlinked_segments();
  d.unlinked_bytes = s.unlinked_bytes();
  d.log_lines_dropped = s.log_lines_dropped();
  d.shared_regions = s.shared_regions();
  d.shared_region_resident_bytes = s.shared_region_resident_bytes();
  d.shared_region_free_bytes = s.shared_region_free_bytes();
  d.huge_page_bytes = s.huge_page_bytes();
  for (const auto& c : s.auto_unlinked()) d.auto_unlinked[c.name()] = c.value();
  d.tickets_in_flight = s.tickets_in_flight();
  d.tickets_lapsed = s.tickets_lapsed();
  d.waiters = s.waiters();
  for (const auto& c : s.refusals()) d.refusals[c.name()] = c.value();
  d.pool_bytes = s.pool_bytes();
  d.pool_segments = s.pool_segments();
  d.pool_max_bytes = s.pool_max_bytes();
  d.pool_reused = s.pool_reused();
  d.pool_released_bytes = s.pool_released_bytes();
  const auto& l = s.limits();
  d.limits = {.max_memory_per_user = l.max_memory_per_user(),
              .max_segments_per_user = l.max_segments_per_user(),
              .max_connections = l.max_connections(),
              .max_connections_per_user = l.max_connections_per_user(),
              .max_attachments_per_connection = l.max_attachments_per_connection(),
              .handshake_timeout = std::chrono::milliseconds(l.handshake_timeout_ms()),
              .fd_limit = l.fd_limit(),
              .fd_reserve = l.fd_reserve()};
  return d;
}

Result<PurgeResult> Client::Purge(const PurgeOptions& o) {
  wire::Request req;
  auto* p = req.mutable_purge();
  for (const auto& pattern : o.patterns) p->add_patterns(pattern);
  p->set_orphans(o.orphans);
  if (o.older_than) p->set_older_than_seconds(static_cast<std::uint64_t>(o.older_than->count()));
  if (o.owner_uid) p->set_owner_uid(*o.owner_uid);
  p->set_unattached(o.unattached);
  p->set_all(o.all);
  p->set_dry_run(o.dry_run);
  // Long purges come in slices, each atomic; the daemon says where to go on.
  PurgeResult result;
  for (;;) {
    auto reply = core_->Call(req, wire::Reply::kPurge);
    if (!reply.ok()) return reply.status();
    const auto& r = reply->purge();
    for (const auto& x : r.removed()) result.removed.push_back({x.name(), x.nbytes(), x.uid()});
    result.truncated |= r.truncated();
    result.removed_count += r.removed_count();
    result.bytes_freed += r.bytes_freed();
    result.skipped_not_owner += r.skipped_not_owner();
    if (r.next_after().empty() || r.next_after() <= p->start_after()) break;
    p->set_start_after(r.next_after());
  }
  return result;
}

Result<TrimResult> Client::Trim() {
  wire::Request req;
  req.mutable_trim();
  auto reply = core_->Call(req, wire::Reply::kTrim);
  if (!reply.ok()) return reply.status();
  return TrimResult{reply->trim().bytes_released(), reply->trim().segments_released()};
}

const ServerInfo& Client::server() const { return core_->server(); }
const std::string& Client::socket_path() const { return core_->path(); }

}  // namespace shmbroker
