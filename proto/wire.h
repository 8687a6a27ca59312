// Packet I/O shared by the daemon and the clients: one SEQPACKET packet per message, with any
// descriptors in SCM_RIGHTS on the same packet. Internal; not installed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace shmbroker::wire {

// Upper bounds the daemon enforces (also announced in HelloReply.limits).
inline constexpr std::size_t kMaxRequestBytes = 64 * 1024;
inline constexpr std::size_t kMaxReplyBytes = 96 * 1024;
// SCM_MAX_FD: the kernel refuses more per message.
inline constexpr std::size_t kMaxFdsPerPacket = 253;

// Owns a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

enum class RecvStatus {
  kOk,          // A whole packet is in `data` (and any fds in `fds`).
  kWouldBlock,  // Non-blocking and nothing to read.
  kClosed,      // The peer closed the connection (or sent an empty packet).
  kTruncated,   // The packet or its control data did not fit (MSG_TRUNC / MSG_CTRUNC).
  kError,       // errno-style failure; see `error`.
};

struct RecvResult {
  RecvStatus status = RecvStatus::kError;
  int error = 0;              // errno for kError.
  std::size_t size = 0;       // Bytes of the packet in the buffer.
  std::vector<UniqueFd> fds;  // Descriptors that came with it (CLOEXEC).
};

// Receives one packet into `buffer`. Always passes a control buffer so that fds a peer sends are
// received (and owned by the result) rather than left in limbo, and MSG_CMSG_CLOEXEC so they
// never leak into exec'd children. `nonblocking` adds MSG_DONTWAIT.
RecvResult RecvPacket(int sock, std::span<std::byte> buffer, bool nonblocking);

// Sends one packet with `fds` attached (may be empty). MSG_NOSIGNAL: a dead peer is EPIPE, not a
// signal. Returns 0 or an errno value (EAGAIN when non-blocking and full).
int SendPacket(int sock, std::span<const std::byte> data, std::span<const int> fds,
               bool nonblocking);

// Socket path resolution, the same in the daemon and every client: `explicit_path` if not empty,
// else $SHMBROKER_SOCKET, else /run/shmbroker/shmbroker.sock for root, else
// $XDG_RUNTIME_DIR/shmbroker/shmbroker.sock, else /tmp/shmbroker-$UID/shmbroker.sock.
std::string ResolveSocketPath(const std::string& explicit_path);

}  // namespace shmbroker::wire
