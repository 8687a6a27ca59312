// Per-connection state (Session) and a reply ready to send (Outcome): what passes between a
// Connection and the RequestHandler.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "credentials.h"
#include "segment_entry.h"
#include "shmbroker.pb.h"

namespace shmbroker::daemon {

// What the daemon knows about one client connection.
struct Session {
  std::uint64_t id = 0;
  Credentials creds;
  std::string client_name;
  bool greeted = false;

  struct Attachment {
    std::shared_ptr<SegmentEntry> segment;
    Access access;
  };
  std::unordered_map<std::uint64_t, Attachment> attachments;
  std::uint64_t next_attachment_id = 1;
  // Regions whose fd this connection has been sent and not released.
  std::unordered_set<std::uint64_t> regions_sent;
};

// A reply ready to send. `fds` stay valid while `keep_alive` holds their segment.
struct Outcome {
  wire::Reply reply;
  std::vector<int> fds;
  std::shared_ptr<SegmentEntry> keep_alive;
  bool close_connection = false;  // After sending: protocol errors end the connection.
};

}  // namespace shmbroker::daemon
