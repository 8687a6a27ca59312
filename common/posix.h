// POSIX plumbing written once for the client, the daemon and shmctl: errno as a Status, Unix
// socket addresses and connecting, SCM_RIGHTS messages, the clock, unsigned numbers in text.
// Internal; not installed.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/unique_fd.h"
#include "shmbroker/status.h"

namespace shmbroker {

// "CONTEXT: strerror(err)", with the code that fits `err`: RESOURCE_EXHAUSTED when the system
// ran out of something (EMFILE, ENFILE, ENOMEM, ENOSPC), INTERNAL otherwise.
Status PosixError(std::string_view context, int err);

// A sockaddr_un for a filesystem path. INVALID_ARGUMENT when `path` is empty or does not fit.
struct UnixAddress {
  sockaddr_un addr{};
  socklen_t length = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&addr); }
};
Result<UnixAddress> MakeUnixAddress(std::string_view path);

// A new close-on-exec SOCK_SEQPACKET socket connected to `path`. On failure, the errno of the
// failed call and a message naming the path.
struct ConnectError {
  int error = 0;
  std::string message;
};
std::optional<UniqueFd> ConnectSeqPacket(const std::string& path, ConnectError* error);

// A msghdr for one datagram or packet of `data` with `fds` attached as SCM_RIGHTS (none: no
// control data). Keeps the buffers it points into; send with sendmsg(fd, msg.get(), flags).
class FdMessage {
 public:
  FdMessage(std::span<const std::byte> data, std::span<const int> fds);
  FdMessage(const FdMessage&) = delete;
  FdMessage& operator=(const FdMessage&) = delete;
  msghdr* get() { return &msg_; }

 private:
  iovec iov_{};
  msghdr msg_{};
  std::vector<char> control_;
};

// Nanoseconds since the Unix epoch (the system clock).
std::int64_t NowUnixNs();

// All of a small file such as one in /proc; empty when it cannot be read (e.g. a sandbox hides
// /proc).
std::string ReadWholeFile(const char* path);

// A decimal number made of digits only ("" and "+1" are not numbers); nullopt when malformed or
// beyond 2^64 - 1.
std::optional<std::uint64_t> ParseUint(std::string_view text);

}  // namespace shmbroker
