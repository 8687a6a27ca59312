// The client's connection: one SEQPACKET socket, serialized request/reply round trips, and the
// cache of mapped regions keyed by region id (never by fd number: fd numbers get reused).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "shmbroker.pb.h"
#include "shmbroker/client.h"
#include "wire.h"

namespace shmbroker::internal {

// One mapping of a daemon region; unmapped when the last Segment using it goes.
struct Region {
  Region(std::uint64_t id, void* addr, std::size_t length) : id(id), addr(addr), length(length) {}
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  ~Region();
  const std::uint64_t id;
  void* const addr;
  const std::size_t length;
};

class ClientCore : public std::enable_shared_from_this<ClientCore> {
 public:
  ClientCore(UniqueFd sock, std::string path, bool prefault, bool pipeline_releases, bool ahead);

  Status Handshake(const std::string& client_name);

  // One round trip. Fails with the reply's code when it is not OK, and with PROTOCOL_ERROR when
  // the reply's body is not `expected`.
  Result<wire::Reply> Call(const wire::Request& request, wire::Reply::BodyCase expected,
                           std::vector<UniqueFd>* fds = nullptr);

  // Create or attach: one round trip and the mapping. `prefault` unset: the client's default.
  Result<Segment> Map(const wire::Request& request, std::optional<bool> prefault);

  // A create that ClientOptions::ahead applies to (a generated name, not persistent, no ttl, no
  // attrs): takes the spare made for the same request if there is one, else creates as Map()
  // does; then, if the segment is a block of a shared region, sends the create of the next one
  // (named `next_name`) without waiting.
  Result<Segment> CreateAhead(const wire::Request& request, std::optional<bool> prefault,
                              std::string next_name);
  bool ahead() const { return ahead_; }

  // Called by ~Segment (`wait` false: the release is queued, to ride on the next request) and
  // Segment::Detach (true).
  Status Release(Segment& segment, bool wait);

  // Sends the queued releases and reads every reply still due: the daemon has applied them all.
  Status Flush();

  // The Client is gone: no request will carry queued releases any more, so they go now, and
  // later ones (of Segments that outlive it) at once.
  void ClientGone();

  const ServerInfo& server() const { return server_; }
  bool pipeline_releases() const { return pipeline_releases_; }
  const std::string& path() const { return path_; }

 private:
  Result<wire::Reply> CallLocked(const wire::Request& request, wire::Reply::BodyCase expected,
                                 std::vector<UniqueFd>* fds);
  Status Broken(const std::string& what);
  // Reads the replies of pipelined requests: a release's is ignored (a failed release changes
  // nothing here), a spare's is mapped at once (later replies may assume its region is mapped).
  Status DrainLocked();
  // Map()'s second half: `reply` (an attach reply) and its descriptors become a Segment. When that
  // fails the attachment is given back, waiting for the daemon if `wait_on_failure`, else queued.
  Result<Segment> MaterializeLocked(const wire::Reply& reply, std::vector<UniqueFd> fds,
                                    std::optional<bool> prefault, bool wait_on_failure);
  // The release of `segment`'s attachment (and of its region, if no other Segment maps it):
  // (attachment id, released region id or 0). Leaves `segment` without its region.
  std::pair<std::uint64_t, std::uint64_t> ReleaseOfLocked(Segment& segment);
  // The reply of spare `seq` arrived.
  void SpareArrivedLocked(std::uint64_t seq, wire::RecvResult& packet);
  // Gives spare number `i` back: its release is queued (so the Segment never calls back here),
  // and, for a connection's spare, which would otherwise stay until the connection closes, its
  // unlink.
  void DropSpareLocked(std::size_t i);
  // Sends the unlinks of dropped spares, pipelined (releases ride on them).
  Status SendUnlinksLocked();
  // Appends the queued releases to the serialized request `bytes` (field `releases`) when they
  // fit in one packet with it; false, changing nothing, when they do not.
  bool RideLocked(std::string& bytes);
  // Sends the queued releases pipelined, in packets of their own.
  Status SendQueuedLocked();
  // Sends `bytes` (a serialized request, the queued releases riding on it if they fit) without
  // waiting for its reply, whose entry in unread_ is `spare` (0: a reply to ignore).
  Status SendPipelinedLocked(std::string bytes, std::uint64_t spare);

  std::mutex mu_;
  UniqueFd sock_;
  const std::string path_;
  const bool prefault_;
  const bool pipeline_releases_;
  const bool ahead_;
  ServerInfo server_;
  bool broken_ = false;
  std::vector<std::byte> buffer_;
  // Replies of pipelined requests not read yet, oldest first: 0 for one to ignore (a release's,
  // an unlink's), else the spare's number. At most kPipeline, so that neither side can block on
  // a full socket buffer while the other waits.
  static constexpr std::size_t kPipeline = 32;
  std::deque<std::uint64_t> unread_;
  // Segments made ahead (ClientOptions::ahead), oldest first, one per kind of create (the
  // request without its name, and the prefault choice), at most kSpares.
  struct Spare {
    std::string key;
    std::uint64_t seq = 0;
    bool prefault = false;
    std::string name;
    bool connection = false;         // Lifetime kConnection: a release alone does not free it.
    std::optional<Segment> segment;  // Empty until its reply is read.
  };
  static constexpr std::size_t kSpares = 4;
  std::vector<Spare> spares_;
  std::uint64_t next_spare_ = 0;
  // Dropped spares of lifetime kConnection, to unlink (pipelined) before the next request.
  std::vector<std::string> unlinks_;
  // Releases queued by destroyed Segments (pipeline_releases) and dropped spares: (attachment
  // id, released region id or 0). At most kRide: a full queue goes at once, so one packet always
  // carries it.
  static constexpr std::size_t kRide = 1024;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> queued_;
  static_assert(kRide * 26 + 64 < wire::kMaxRequestBytes, "a full queue fits in one packet");
  bool client_gone_ = false;
  std::unordered_map<std::uint64_t, std::weak_ptr<Region>> regions_;
  // Shared regions (small segments' blocks) stay mapped while the connection lives: later
  // segments in them need no descriptor and no mmap.
  std::unordered_map<std::uint64_t, std::shared_ptr<Region>> kept_;
};

// Conversions from the wire.
SegmentInfo FromWire(const wire::SegmentInfo& w);

}  // namespace shmbroker::internal
