// One client connection on the event loop: reads request packets with recvmsg (Asio's own
// receive cannot carry descriptors), answers each through the RequestHandler, and sends the reply
// and its fds in one sendmsg. Never blocks: a full socket waits through Asio, a deferred reply
// pauses reading until the handler completes it.
//
// An idle connection costs little: the receive buffer is shared by every connection (one thread
// reads at a time), and a reply is kept only while the socket is full.
#pragma once

#include <asio.hpp>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "request_handler.h"
#include "session.h"

namespace shmbroker::daemon {

using SeqPacket = asio::generic::seq_packet_protocol;

class ConnectionManager;

class Connection : public std::enable_shared_from_this<Connection>, public ReplySink {
 public:
  // `buffer` (at least kMaxRequestBytes + 1 bytes) is shared with the other connections.
  Connection(SeqPacket::socket socket, RequestHandler& handler, ConnectionManager& manager,
             Session session, std::vector<std::byte>& buffer);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  void Start();
  // Closes the socket and releases the session; idempotent. Called by the manager.
  void Stop();
  void Complete(Outcome outcome) override;

  const Session& session() const { return session_; }

 private:
  // While a reply is deferred (a long wait): notice if the client hangs up meanwhile.
  void WatchHangup();
  // The client is gone, or sent more: then the wait is dropped and what it sent applied.
  void CheckHangup();
  void WaitReadable();
  void OnReadable();
  // Serializes and sends `outcome`; false when it has to wait for the socket (or the connection
  // ended), in which case it goes on by itself once sent.
  bool Reply(Outcome outcome);
  bool SendPending();
  void Finish();  // Ask the manager to stop us.

  struct PendingReply {
    std::string bytes;
    Outcome outcome;
  };

  SeqPacket::socket socket_;
  RequestHandler& handler_;
  ConnectionManager& manager_;
  Session session_;
  std::vector<std::byte>& buffer_;
  std::unique_ptr<PendingReply> pending_;  // Only while the socket is full.
  bool awaiting_ = false;                  // A deferred reply is outstanding.
  bool stopped_ = false;
  // The client closed with replies unread (the kernel said ECONNRESET or EPIPE): the requests it
  // sent before are still queued and are applied, their replies dropped, until end of file.
  bool hung_up_ = false;
  // Looks for a hangup now and then while requests wait behind a deferred reply: the socket
  // stays readable, so epoll says nothing of it.
  std::unique_ptr<asio::steady_timer> hangup_timer_;
};

// Owns the live connections: counts them per uid, closes those that never say hello, and stops
// them all at shutdown.
class ConnectionManager {
 public:
  void Start(std::shared_ptr<Connection> c);
  void Stop(const std::shared_ptr<Connection>& c);
  void StopAll();
  std::size_t size() const { return connections_.size(); }
  std::size_t CountForUid(std::uint32_t uid) const;
  // Closes connections still without a handshake `timeout` after they opened. Returns how many.
  std::size_t CloseSilent(std::chrono::milliseconds timeout);

 private:
  std::set<std::shared_ptr<Connection>> connections_;
  std::map<std::uint32_t, std::size_t> per_uid_;
  // In the order they opened: the oldest are the first to time out.
  std::deque<std::weak_ptr<Connection>> unhandshaken_;
};

}  // namespace shmbroker::daemon
