#include "wire.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/posix.h"

namespace shmbroker::wire {

RecvResult RecvPacket(int sock, std::span<std::byte> buffer, bool nonblocking) {
  RecvResult r;
  // Room for a few fds: enough to see that a peer sent some; more are closed by the kernel and
  // reported as MSG_CTRUNC.
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
  struct iovec iov {
    buffer.data(), buffer.size()
  };
  struct msghdr msg {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  int flags = MSG_CMSG_CLOEXEC | (nonblocking ? MSG_DONTWAIT : 0);
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, flags);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    r.error = errno;
    r.status =
        (errno == EAGAIN || errno == EWOULDBLOCK) ? RecvStatus::kWouldBlock : RecvStatus::kError;
    return r;
  }
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        r.fds.emplace_back(fd);
      }
    }
  }
  r.size = static_cast<std::size_t>(n);
  if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
    r.status = RecvStatus::kTruncated;
  } else if (n == 0) {
    r.status = RecvStatus::kClosed;
  } else {
    r.status = RecvStatus::kOk;
  }
  return r;
}

int SendPacket(int sock, std::span<const std::byte> data, std::span<const int> fds,
               bool nonblocking) {
  if (fds.size() > kMaxFdsPerPacket) return EINVAL;
  FdMessage msg(data, fds);
  int flags = MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0);
  ssize_t n;
  do {
    n = ::sendmsg(sock, msg.get(), flags);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno;
  // SEQPACKET sends all or nothing.
  return 0;
}

void ShutdownForClose(int sock, std::span<std::byte> scratch) {
  ::shutdown(sock, SHUT_RD);
  while (RecvPacket(sock, scratch, /*nonblocking=*/true).status == RecvStatus::kOk) {
  }
}

}  // namespace shmbroker::wire
