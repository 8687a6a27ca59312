// The client's connection: one SEQPACKET socket, serialized request/reply round trips, and the
// cache of mapped regions keyed by region id (never by fd number: fd numbers get reused).
#pragma once

#include <cstdint>
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
  ClientCore(UniqueFd sock, std::string path, bool prefault, bool pipeline_releases);

  Status Handshake(const std::string& client_name);

  // One round trip. Fails with the reply's code when it is not OK, and with PROTOCOL_ERROR when
  // the reply's body is not `expected`.
  Result<wire::Reply> Call(const wire::Request& request, wire::Reply::BodyCase expected,
                           std::vector<UniqueFd>* fds = nullptr);

  // Create or attach: one round trip and the mapping. `prefault` unset: the client's default.
  Result<Segment> Map(const wire::Request& request, std::optional<bool> prefault);

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
  // Reads the replies of pipelined releases (ignored: a failed release changes nothing here).
  Status DrainLocked();
  // Appends the queued releases to the serialized request `bytes` (field `releases`) when they
  // fit in one packet with it; false, changing nothing, when they do not.
  bool RideLocked(std::string& bytes);
  // Sends the queued releases pipelined, in packets of their own.
  Status SendQueuedLocked();

  std::mutex mu_;
  UniqueFd sock_;
  const std::string path_;
  const bool prefault_;
  const bool pipeline_releases_;
  ServerInfo server_;
  bool broken_ = false;
  std::vector<std::byte> buffer_;
  // Replies of pipelined releases not read yet. At most kPipeline, so that neither side can
  // block on a full socket buffer while the other waits.
  static constexpr int kPipeline = 32;
  int unread_ = 0;
  // Releases queued by destroyed Segments (pipeline_releases): (attachment id, released region
  // id or 0). At most kRide: a full queue goes at once, so one packet always carries it.
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
