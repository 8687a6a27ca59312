// Per-connection state (Session), a reply ready to send (Outcome), and where a reply goes that the
// handler gives later (ReplySink): what passes between a Connection and the RequestHandler.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "credentials.h"
#include "segment_entry.h"
#include "shmbroker.pb.h"

namespace shmbroker::daemon {

struct Outcome;

// The Connection's end of a deferred reply.
class ReplySink {
 public:
  virtual ~ReplySink() = default;
  // The reply to the request the handler deferred: called once, on the event loop. Until then the
  // connection reads nothing more, so replies keep the order of their requests.
  virtual void Complete(Outcome outcome) = 0;
};

// What the daemon knows about one client connection.
struct Session {
  std::uint64_t id = 0;
  Credentials creds;
  std::string client_name;
  bool greeted = false;
  std::chrono::steady_clock::time_point opened = std::chrono::steady_clock::now();
  std::weak_ptr<ReplySink> sink;  // Where a deferred reply goes.

  struct Attachment {
    std::shared_ptr<SegmentEntry> segment;
    Access access;
    // False when its reply was dropped (the client had hung up): the client never learned
    // where it is, so nothing is held for it at the close.
    bool delivered = true;
  };
  std::unordered_map<std::uint64_t, Attachment> attachments;
  std::uint64_t next_attachment_id = 1;
  // Regions whose fd this connection has been sent and not released.
  // The segment is held for as long as the client may map its region: its memory counts as in
  // use (see Ledger) until the client says it unmapped it or the connection closes.
  std::unordered_map<std::uint64_t, std::shared_ptr<SegmentEntry>> regions_sent;
  // What the purge in progress removed in its earlier slices: logged once, when it ends.
  struct {
    std::uint64_t segments = 0;
    std::uint64_t bytes = 0;
  } purged;
};

// A reply ready to send. `fds` stay open while `pins` hold their regions, even if the segment is
// unlinked before the reply leaves.
struct Outcome {
  wire::Reply reply;
  std::vector<int> fds;
  std::vector<Region::Pin> pins;
  bool close_connection = false;  // After sending: protocol errors end the connection.
  // The request used its scan budget: let other connections have a turn before the next one.
  bool yield = false;
  // No reply yet: the handler completes it later through the session's sink.
  bool deferred = false;

  static Outcome Deferred() {
    Outcome o;
    o.deferred = true;
    return o;
  }
};

}  // namespace shmbroker::daemon
