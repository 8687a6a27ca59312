// The shmbroker C++ client. Including this header brings in the whole public API:
//
//   auto client = shmbroker::Client::Connect();
//   if (!client.ok()) { /* client.status().ToString() says why */ }
//   auto seg = client->Create({.name = "job7/weights", .dtype = "<f4", .shape = {1024, 1024}});
//   std::span<float> w = seg->as<float>().value();
//
// Errors: every call returns a Status or a Result<T> (shmbroker/status.h) whose codes are the
// wire protocol's. Nothing throws except std::bad_alloc.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shmbroker/segment.h"
#include "shmbroker/status.h"
#include "shmbroker/types.h"
#include "shmbroker/version.h"

namespace shmbroker {

// The socket path every shmbroker client uses: `explicit_path` if not empty, else
// $SHMBROKER_SOCKET, else the system service's /run/shmbroker/shmbroker.sock for root or when it
// exists, else $XDG_RUNTIME_DIR/shmbroker/shmbroker.sock, else /tmp/shmbroker-$UID/shmbroker.sock.
std::string ResolveSocketPath(std::string_view explicit_path = {});

struct ClientOptions {
  std::string socket_path;  // Empty: ResolveSocketPath().
  std::string client_name;  // Shown in the daemon's log; default "cpp:<program>".
  // Map new regions with all their page tables filled in at once (MADV_POPULATE_*; no-op on
  // kernels before 5.14): far cheaper than a page fault per 4 KiB when the data is read whole.
  // The default for Create and Attach, which can choose per call.
  bool prefault = true;
  // Destroying a Segment queues its release, which rides on the client's next request (applied
  // before it) or goes with Client::Flush(): no round trip and no packet of its own. Until then
  // the daemon still counts the attachment, so another connection (a Seal, a Stat, the end of a
  // refcount segment) does not see it go; keep false where that matters, or call
  // Segment::Detach(), which always waits. At most 1024 wait in the queue; once the Client is
  // destroyed they are sent at once.
  bool pipeline_releases = false;
  // Make small segments ahead: a Create with a generated name (empty CreateOptions::name),
  // lifetime kConnection or kRefcount and no ttl or attrs, that lands in a shared region (see
  // --shared-max), is followed without waiting by the create of the next one of the same
  // request, which the next such Create takes with no round trip. One spare of each kind, four
  // kinds at most: ordinary segments, named, listed and charged as any until taken (a refcount
  // spare counts as this client's reference) and given back when the Client goes, before a
  // create is refused for memory, or when a fifth kind pushes it out (a kConnection spare is then
  // unlinked too). As the Python client's connect(ahead=True). It pays where the
  // daemon has a CPU to itself and the spare's reply has time to come (README, Benchmarks).
  bool ahead = false;
  // A daemon is trusted when it runs as root or as this user, or when only root can have put its
  // socket where it is. Set this to also trust a daemon run by this uid (a deliberate cross-user
  // setup); unset, $SHMBROKER_TRUST_UID (a uid or user name) is used when set.
  std::optional<uid_t> trusted_uid;
};

struct CreateOptions {
  // 1..255 printable ASCII bytes, no spaces; '/' allowed. Empty: a unique name is generated,
  // "auto/<pid>-<n>-<random>" (Segment::name() says which), as Python's create(None, ...).
  std::string name;
  std::string dtype = "|u1";         // NumPy type string; "|u1" with shape {n} is n raw bytes.
  std::vector<std::uint64_t> shape;  // Empty: a 0-d array of one item.
  Order order = Order::kC;
  std::uint32_t mode = 0600;  // Who may attach: owner/group/other read and write bits.
  std::map<std::string, std::string> attrs;
  // Fill the page tables at once: pays when the whole segment is written next; costs when only
  // parts of a huge one are. Unset: ClientOptions::prefault.
  std::optional<bool> prefault;
  // When the daemon unlinks it by itself (see Lifetime): kConnection when this client's
  // connection closes, kRefcount when its last attachment anywhere is released.
  Lifetime lifetime = Lifetime::kPersistent;
  // Unlinked this long after creation, whatever the lifetime (1 ms to ten years).
  std::optional<std::chrono::milliseconds> ttl;
};

struct AttachOptions {
  Access access = Access::kReadOnly;
  // Fail (PERMISSION_DENIED) unless the segment belongs to this uid: any user may create a name
  // outside ~USER/ first, so a consumer that knows who the producer is says so.
  std::optional<uid_t> owner_uid;
  // As for CreateOptions: pays when the whole segment is read next. Unset: the client's default.
  std::optional<bool> prefault;
  // Wait up to this long (at most a day) in the daemon for the segment to exist (and, with
  // `sealed`, to be sealed) instead of failing with NOT_FOUND; DEADLINE_EXCEEDED past it.
  std::optional<std::chrono::milliseconds> wait;
  // Only a sealed segment will do: FAILED_PRECONDITION (without `wait`) when it is not.
  bool sealed = false;
};

// What the daemon said in the handshake.
struct ServerInfo {
  std::uint32_t protocol_version = 0;
  std::string version;
  std::uint32_t pid = 0;
  std::uint64_t max_memory = 0;  // 0: no cap.
  std::uint32_t max_name_bytes = 0;
  std::uint32_t max_dims = 0;
  std::uint32_t max_attrs = 0;
};

// The daemon's limits, each with its option in shmbrokerd(8); 0 means none where it says so.
struct DaemonLimits {
  std::uint64_t max_memory_per_user = 0;
  std::uint64_t max_segments_per_user = 0;
  std::uint32_t max_connections = 0;
  std::uint32_t max_connections_per_user = 0;
  std::uint32_t max_attachments_per_connection = 0;
  std::chrono::milliseconds handshake_timeout{0};
  std::uint64_t fd_limit = 0;    // RLIMIT_NOFILE.
  std::uint64_t fd_reserve = 0;  // Of them, kept for existing clients and root.
};

struct DaemonStats {
  std::string version;
  std::uint32_t pid = 0;
  std::chrono::system_clock::time_point started;
  std::string socket_path;
  std::uint64_t segments = 0;
  std::uint64_t bytes_held = 0;
  std::uint64_t max_memory = 0;  // 0: no cap.
  std::uint32_t clients = 0;
  std::map<std::string, std::uint64_t> requests;  // By operation: "create", "attach", ...
  std::map<std::string, std::uint64_t> errors;    // By code name: "NOT_FOUND", ...
  // Unlinked, but still attached or mapped somewhere: counted in bytes_held (and against every
  // cap) until released.
  std::uint64_t unlinked_segments = 0;
  std::uint64_t unlinked_bytes = 0;
  DaemonLimits limits;
  std::uint64_t log_lines_dropped = 0;  // Lost because the daemon's stderr did not keep up.
  // Shared regions (small segments are blocks of them): how many, the memory they hold, and of
  // it what is in no block (kept zeroed for reuse): the regions' overhead beyond bytes_held.
  std::uint64_t shared_regions = 0;
  std::uint64_t shared_region_resident_bytes = 0;
  std::uint64_t shared_region_free_bytes = 0;
  std::uint64_t huge_page_bytes = 0;  // Segment memory backed by 2 MiB pages.
  // Segments the daemon unlinked by itself, by cause: "connection", "refcount", "ttl".
  std::map<std::string, std::uint64_t> auto_unlinked;
  std::uint64_t tickets_in_flight = 0;  // Refcount arrays pickled and not yet unpickled.
  std::uint64_t tickets_lapsed = 0;     // Of those, given up after --in-flight-timeout.
  std::uint32_t waiters = 0;            // Attaches waiting for a segment.
  // Requests and connections refused at a limit, by limit: "memory_per_user",
  // "segments_per_user", "max_memory", "connections", ... (see shmctl(1), stats).
  std::map<std::string, std::uint64_t> refusals;
  // The warm pool (--warm-pool, --prealloc): released large segments' memory kept, zeroed, for
  // later creates; not in bytes_held, but counted with it against max_memory.
  std::uint64_t pool_bytes = 0;
  std::uint64_t pool_segments = 0;
  std::uint64_t pool_max_bytes = 0;       // 0: no pool.
  std::uint64_t pool_reused = 0;          // Creates served from the pool since start.
  std::uint64_t pool_released_bytes = 0;  // Given back: caps, memory pressure, trim.
};

// What Client::Trim gave back.
struct TrimResult {
  std::uint64_t bytes_released = 0;
  std::uint64_t segments_released = 0;
};

// Which segments Client::Purge removes: those matching every selector that is set.
struct PurgeOptions {
  std::vector<std::string> patterns;  // Name matches any of these globs.
  bool orphans = false;               // No attachments and the creating connection has closed.
  std::optional<std::chrono::seconds> older_than;
  std::optional<std::uint32_t> owner_uid;
  bool unattached = false;  // No live attachments.
  bool all = false;         // Every segment (still subject to ownership).
  bool dry_run = false;     // Only report what would be removed.
};

struct PurgeResult {
  struct Removed {
    std::string name;
    std::uint64_t nbytes = 0;
    std::uint32_t uid = 0;
  };
  std::vector<Removed> removed;  // In name order; may be cut short, see `truncated`.
  bool truncated = false;
  std::uint64_t removed_count = 0;
  std::uint64_t bytes_freed = 0;
  std::uint64_t skipped_not_owner = 0;  // Matched, but a non-root caller does not own them.
};

// A connection to shmbrokerd. Thread-safe: one Client may be shared by any number of threads
// (requests are serialized on its one connection). Move-only. The connection closes when the
// Client and every Segment obtained from it are gone. A lost connection is not re-established:
// calls then fail with UNAVAILABLE, while mapped Segments stay valid.
class Client {
 public:
  // Connects and performs the handshake. UNAVAILABLE (naming the path) when no daemon answers.
  static Result<Client> Connect(const ClientOptions& options = {});

  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  // Gives back the spares (reading the replies of those still in flight) and sends the queued
  // releases: the daemon keeps a block still attached at disconnect until the process exits.
  ~Client();

  // Creates a segment and maps it read-write. ALREADY_EXISTS if the name is taken;
  // RESOURCE_EXHAUSTED when the memory cannot be reserved (nothing is created then).
  Result<Segment> Create(const CreateOptions& options);

  // Creates a C-order array of T (dtype DtypeOf<T>()).
  template <typename T>
  Result<Segment> CreateArray(std::string name, std::vector<std::uint64_t> shape,
                              std::uint32_t mode = 0600) {
    return Create({.name = std::move(name),
                   .dtype = std::string(DtypeOf<T>()),
                   .shape = std::move(shape),
                   .mode = mode});
  }

  // Maps an existing segment. Read-only unless asked otherwise; PERMISSION_DENIED when the
  // segment's mode does not grant the access to this process's uid/gid.
  Result<Segment> Attach(std::string_view name, Access access = Access::kReadOnly);
  Result<Segment> Attach(std::string_view name, const AttachOptions& options);

  // Removes the name at once (owner or root). Processes that have it mapped keep their mapping;
  // the memory returns to the system when the last mapping goes.
  Status Unlink(std::string_view name);

  // Makes the segment immutable, enforced by the kernel (F_SEAL_WRITE): afterwards nobody can
  // change a byte of it. Needs write access. FAILED_PRECONDITION while other connections hold
  // writable attachments (the message says how many) or while a writable mapping of it remains,
  // this client's included: let writable Segments of it go first. Sealing twice is no error.
  Result<SegmentInfo> Seal(std::string_view name);

  // Everything about one segment, including which connections hold it (SegmentInfo::holders).
  Result<SegmentInfo> Stat(std::string_view name);

  // Segments whose names match the glob `pattern` (fnmatch(3); '*' also matches '/'), sorted by
  // name; all of them when `pattern` is empty.
  Result<std::vector<SegmentInfo>> List(std::string_view pattern = {});
  // Unlinked segments whose memory is still in use (attached or mapped somewhere), with the
  // connections holding each: what keeps memory the stats count as unlinked. All of them, in the
  // order of their ids (paged as List is).
  Result<std::vector<SegmentInfo>> ListUnlinked(std::string_view pattern = {});

  Result<DaemonStats> Stats();

  // Unlinks every segment matching all the selectors, in slices the daemon bounds to a few
  // milliseconds each (no race between choosing and unlinking within a slice). INVALID_ARGUMENT
  // when no selector is set or past the pattern caps. Non-root callers remove only their own.
  Result<PurgeResult> Purge(const PurgeOptions& options);

  // Gives the warm pool's memory back to the kernel: all of it for root or the daemon's own
  // user, otherwise what the pool keeps for this user's segments.
  Result<TrimResult> Trim();

  // Sends the releases queued by destroyed Segments (ClientOptions::pipeline_releases) and reads
  // every reply still due: when it returns, the daemon has applied them all.
  Status Flush();

  const ServerInfo& server() const;
  const std::string& socket_path() const;

 private:
  explicit Client(std::shared_ptr<internal::ClientCore> core);
  std::shared_ptr<internal::ClientCore> core_;
};

}  // namespace shmbroker
