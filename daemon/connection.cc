#include "connection.h"

#include <poll.h>
#include <sys/socket.h>

#include <spdlog/spdlog.h>

#include "log.h"

namespace shmbroker::daemon {

// Packets handled per wake-up before yielding to other connections.
constexpr int kPacketsPerTurn = 32;
constexpr auto kHangupCheckEvery = std::chrono::milliseconds(100);

Connection::Connection(SeqPacket::socket socket, RequestHandler& handler,
                       ConnectionManager& manager, Session session, std::vector<std::byte>& buffer)
    : socket_(std::move(socket)),
      handler_(handler),
      manager_(manager),
      session_(std::move(session)),
      buffer_(buffer) {}

void Connection::Start() {
  session_.sink = shared_from_this();
  handler_.Opened(session_);
  // The info line comes with the handshake, which names the client.
  spdlog::debug("client {} accepted (pid {}, uid {}, gid {})", session_.id, session_.creds.pid,
                session_.creds.uid, session_.creds.gid);
  WaitReadable();
}

void Connection::Stop() {
  if (stopped_) return;
  stopped_ = true;
  asio::error_code ignored;
  socket_.close(ignored);
  if (hangup_timer_) hangup_timer_->cancel();
  pending_.reset();
  handler_.Closed(session_);
  spdlog::log(session_.greeted ? spdlog::level::info : spdlog::level::debug,
              "client {} disconnected ('{}', pid {})", session_.id, Escaped(session_.client_name),
              session_.creds.pid);
}

void Connection::Finish() { manager_.Stop(shared_from_this()); }

void Connection::WaitReadable() {
  socket_.async_wait(SeqPacket::socket::wait_read,
                     [self = shared_from_this()](const asio::error_code& ec) {
                       if (self->stopped_) return;
                       if (ec) return self->Finish();
                       self->OnReadable();
                     });
}

void Connection::OnReadable() {
  for (int i = 0; i < kPacketsPerTurn; ++i) {
    wire::RecvResult r = wire::RecvPacket(socket_.native_handle(), buffer_, /*nonblocking=*/true);
    // Clients never send descriptors: close any at once, before anything else happens.
    bool had_fds = !r.fds.empty();
    r.fds.clear();
    Outcome outcome;
    switch (r.status) {
      case wire::RecvStatus::kWouldBlock:
        if (hung_up_) return Finish();  // Nothing more can come from a closed peer.
        return WaitReadable();
      case wire::RecvStatus::kClosed:
        return Finish();
      case wire::RecvStatus::kError:
        // Reported once when the client closed with replies unread; what it sent comes next.
        if (r.error == ECONNRESET && !hung_up_) {
          hung_up_ = true;
          continue;
        }
        if (r.error != ECONNRESET) {
          spdlog::warn("client {}: recvmsg: {}", session_.id, std::strerror(r.error));
        }
        return Finish();
      case wire::RecvStatus::kTruncated:
        outcome = handler_.ProtocolError(
            session_, "packet larger than " + std::to_string(wire::kMaxRequestBytes) +
                          " bytes or with control data that did not fit");
        break;
      case wire::RecvStatus::kOk:
        outcome = !had_fds
                      ? handler_.Handle(session_, std::span(buffer_.data(), r.size))
                      : handler_.ProtocolError(session_, "clients must not send file descriptors");
        break;
    }
    if (outcome.deferred) {
      awaiting_ = true;  // Complete() goes on from here.
      if (!hung_up_) return WatchHangup();
      if (!handler_.Abandon(session_)) return;  // What follows is read once it completes.
      awaiting_ = false;
      continue;
    }
    bool yield = outcome.yield;
    if (!Reply(std::move(outcome))) return;
    if (yield) break;
  }
  // Let other connections have a turn; the reactor reports us readable again at once if so.
  WaitReadable();
}

void Connection::WatchHangup() {
  socket_.async_wait(SeqPacket::socket::wait_read,
                     [self = shared_from_this()](const asio::error_code& ec) {
                       if (self->stopped_ || !self->awaiting_) return;
                       if (ec) return self->Finish();
                       self->CheckHangup();
                     });
}

void Connection::CheckHangup() {
  int fd = socket_.native_handle();
  char c;
  ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return WatchHangup();
  if (n == 0 || (n < 0 && errno != ECONNRESET)) return Finish();  // Gone, all read.
  // ECONNRESET (gone with replies unread), or requests queued by a client that may be gone:
  // then they are applied now, not after a long wait.
  pollfd p{fd, POLLRDHUP, 0};
  if (n > 0 && !(::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP)) != 0)) {
    if (!hangup_timer_)
      hangup_timer_ = std::make_unique<asio::steady_timer>(socket_.get_executor());
    hangup_timer_->expires_after(kHangupCheckEvery);
    hangup_timer_->async_wait([self = shared_from_this()](const asio::error_code& ec) {
      if (!ec && !self->stopped_ && self->awaiting_) self->CheckHangup();
    });
    return;  // Read after the reply.
  }
  hung_up_ = true;
  if (!handler_.Abandon(session_)) return;  // Read on once it completes.
  awaiting_ = false;
  OnReadable();
}

void Connection::Complete(Outcome outcome) {
  if (stopped_ || !awaiting_) return;
  awaiting_ = false;
  if (hangup_timer_) hangup_timer_->cancel();  // Its look was for this reply's wait.
  if (Reply(std::move(outcome))) WaitReadable();
}

bool Connection::Reply(Outcome outcome) {
  if (hung_up_) {
    handler_.Undelivered(session_, outcome);
    if (!outcome.close_connection) return true;
    Finish();
    return false;
  }
  auto reply = std::make_unique<PendingReply>();
  if (!outcome.reply.SerializeToString(&reply->bytes)) {
    spdlog::error("client {}: cannot serialize a reply", session_.id);
    Finish();
    return false;
  }
  reply->outcome = std::move(outcome);
  pending_ = std::move(reply);
  return SendPending();
}

bool Connection::SendPending() {
  int err = wire::SendPacket(socket_.native_handle(), std::as_bytes(std::span(pending_->bytes)),
                             pending_->outcome.fds, /*nonblocking=*/true);
  if (err == EAGAIN || err == EWOULDBLOCK) {
    socket_.async_wait(SeqPacket::socket::wait_write,
                       [self = shared_from_this()](const asio::error_code& ec) {
                         if (self->stopped_) return;
                         if (ec) return self->Finish();
                         if (self->SendPending()) self->OnReadable();
                       });
    return false;
  }
  bool close = pending_->outcome.close_connection;
  if (err == EPIPE || err == ECONNRESET) handler_.Undelivered(session_, pending_->outcome);
  pending_.reset();
  if ((err == EPIPE || err == ECONNRESET) && !close) {
    hung_up_ = true;  // Gone with this reply unread: apply what it sent before it went.
    return true;
  }
  if (err != 0) {
    if (err != EPIPE && err != ECONNRESET) {
      spdlog::warn("client {}: sendmsg: {}", session_.id, std::strerror(err));
    }
    Finish();
    return false;
  }
  if (close) {
    wire::ShutdownForClose(socket_.native_handle(), buffer_);
    Finish();
    return false;
  }
  return true;
}

void ConnectionManager::Start(std::shared_ptr<Connection> c) {
  connections_.insert(c);
  ++per_uid_[c->session().creds.uid];
  unhandshaken_.push_back(c);
  c->Start();
}

void ConnectionManager::Stop(const std::shared_ptr<Connection>& c) {
  c->Stop();
  if (connections_.erase(c) != 0) {
    auto it = per_uid_.find(c->session().creds.uid);
    if (it != per_uid_.end() && --it->second == 0) per_uid_.erase(it);
  }
}

void ConnectionManager::StopAll() {
  for (const auto& c : connections_) c->Stop();
  connections_.clear();
  per_uid_.clear();
  unhandshaken_.clear();
}

std::size_t ConnectionManager::CountForUid(std::uint32_t uid) const {
  auto it = per_uid_.find(uid);
  return it == per_uid_.end() ? 0 : it->second;
}

std::size_t ConnectionManager::CloseSilent(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() - timeout;
  std::size_t closed = 0;
  while (!unhandshaken_.empty()) {
    std::shared_ptr<Connection> c = unhandshaken_.front().lock();
    if (c && !c->session().greeted && c->session().opened > deadline) break;
    unhandshaken_.pop_front();
    if (!c || c->session().greeted || connections_.count(c) == 0) continue;
    Stop(c);
    ++closed;
  }
  return closed;
}

}  // namespace shmbroker::daemon
