// Packet I/O shared by the daemon and the clients: one SEQPACKET packet per message, with any
// descriptors in SCM_RIGHTS on the same packet. Internal; not installed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "common/unique_fd.h"

namespace shmbroker::wire {

// Upper bounds the daemon enforces (also announced in HelloReply.limits).
inline constexpr std::size_t kMaxRequestBytes = 64 * 1024;
inline constexpr std::size_t kMaxReplyBytes = 96 * 1024;
// SCM_MAX_FD: the kernel refuses more per message.
inline constexpr std::size_t kMaxFdsPerPacket = 253;

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

// Prepares a socket for closing after a last reply (a refusal, a protocol error) so that the peer
// reads that reply instead of ECONNRESET: stops receiving (the peer's next send fails with EPIPE)
// and discards what it had sent, since closing with unread data resets the connection.
void ShutdownForClose(int sock, std::span<std::byte> scratch);

}  // namespace shmbroker::wire
