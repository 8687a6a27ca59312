// One client connection on the event loop: reads request packets with recvmsg (Asio's own
// receive cannot carry descriptors), answers each through the RequestHandler, and sends the reply
// and its fds in one sendmsg. Never blocks: EAGAIN waits on the socket through Asio.
#pragma once

#include <asio.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "request_handler.h"

namespace shmbroker::daemon {

using SeqPacket = asio::generic::seq_packet_protocol;

class ConnectionManager;

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(SeqPacket::socket socket, RequestHandler& handler, ConnectionManager& manager,
             Session session);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  void Start();
  // Closes the socket and releases the session; idempotent. Called by the manager.
  void Stop();

  const Session& session() const { return session_; }

 private:
  void WaitReadable();
  void OnReadable();
  // Sends `pending_`; false when it has to wait for the socket (or the connection ended).
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
  std::vector<std::byte> buffer_;
  std::optional<PendingReply> pending_;
  bool stopped_ = false;
};

// Owns the live connections so they can all be stopped at shutdown.
class ConnectionManager {
 public:
  void Start(std::shared_ptr<Connection> c);
  void Stop(const std::shared_ptr<Connection>& c);
  void StopAll();
  std::size_t size() const { return connections_.size(); }

 private:
  std::set<std::shared_ptr<Connection>> connections_;
};

}  // namespace shmbroker::daemon
