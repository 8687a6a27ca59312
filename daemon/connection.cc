#include "connection.h"

#include <sys/socket.h>

#include <spdlog/spdlog.h>

namespace shmbroker::daemon {

// Packets handled per wake-up before yielding to other connections.
constexpr int kPacketsPerTurn = 32;

Connection::Connection(SeqPacket::socket socket, RequestHandler& handler,
                       ConnectionManager& manager, Session session)
    : socket_(std::move(socket)),
      handler_(handler),
      manager_(manager),
      session_(std::move(session)),
      // One byte more than the limit so an oversized packet shows up as truncated.
      buffer_(wire::kMaxRequestBytes + 1) {}

void Connection::Start() {
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
  pending_.reset();
  handler_.Closed(session_);
  spdlog::log(session_.greeted ? spdlog::level::info : spdlog::level::debug,
              "client {} disconnected ('{}', pid {})", session_.id, session_.client_name,
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
        return WaitReadable();
      case wire::RecvStatus::kClosed:
        return Finish();
      case wire::RecvStatus::kError:
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
    PendingReply reply;
    if (!outcome.reply.SerializeToString(&reply.bytes)) {
      spdlog::error("client {}: cannot serialize a reply", session_.id);
      return Finish();
    }
    reply.outcome = std::move(outcome);
    pending_ = std::move(reply);
    if (!SendPending()) return;
  }
  // Let other connections have a turn; the reactor reports us readable again at once if so.
  WaitReadable();
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
  pending_.reset();
  if (err != 0) {
    if (err != EPIPE && err != ECONNRESET) {
      spdlog::warn("client {}: sendmsg: {}", session_.id, std::strerror(err));
    }
    Finish();
    return false;
  }
  if (close) {
    Finish();
    return false;
  }
  return true;
}

void ConnectionManager::Start(std::shared_ptr<Connection> c) {
  connections_.insert(c);
  c->Start();
}

void ConnectionManager::Stop(const std::shared_ptr<Connection>& c) {
  c->Stop();
  connections_.erase(c);
}

void ConnectionManager::StopAll() {
  for (const auto& c : connections_) c->Stop();
  connections_.clear();
}

}  // namespace shmbroker::daemon
