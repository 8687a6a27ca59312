#include "common/posix.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>

namespace shmbroker {

Status PosixError(std::string_view context, int err) {
  std::string message = std::string(context) + ": " + std::strerror(err);
  switch (err) {
    case EMFILE:
    case ENFILE:
    case ENOMEM:
    case ENOSPC:
      return Status::ResourceExhausted(std::move(message));
    default:
      return Status::Internal(std::move(message));
  }
}

Result<UnixAddress> MakeUnixAddress(std::string_view path) {
  UnixAddress a;
  if (path.empty() || path.size() >= sizeof(a.addr.sun_path)) {
    return Status::InvalidArgument("socket path '" + std::string(path) +
                                   "' is empty or longer than " +
                                   std::to_string(sizeof(a.addr.sun_path) - 1) + " bytes");
  }
  a.addr.sun_family = AF_UNIX;
  std::memcpy(a.addr.sun_path, path.data(), path.size());
  a.length = sizeof(a.addr);
  return a;
}

std::optional<UniqueFd> ConnectSeqPacket(const std::string& path, ConnectError* error) {
  auto fail = [&](int err, std::string what) -> std::optional<UniqueFd> {
    if (error != nullptr) *error = {err, std::move(what)};
    return std::nullopt;
  };
  auto address = MakeUnixAddress(path);
  if (!address.ok()) return fail(EINVAL, address.status().message());
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd) return fail(errno, std::string("socket: ") + std::strerror(errno));
  int rc;
  do {
    rc = ::connect(fd.get(), address->get(), address->length);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return fail(errno, "connect to '" + path + "': " + std::strerror(errno));
  return fd;
}

FdMessage::FdMessage(std::span<const std::byte> data, std::span<const int> fds) {
  iov_.iov_base = const_cast<std::byte*>(data.data());
  iov_.iov_len = data.size();
  msg_.msg_iov = &iov_;
  msg_.msg_iovlen = 1;
  if (fds.empty()) return;
  control_.resize(CMSG_SPACE(sizeof(int) * fds.size()));
  msg_.msg_control = control_.data();
  msg_.msg_controllen = control_.size();
  cmsghdr* c = CMSG_FIRSTHDR(&msg_);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
}

std::int64_t NowUnixNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::optional<std::uint64_t> ParseUint(std::string_view text) {
  if (text.empty() || text[0] < '0' || text[0] > '9') return std::nullopt;
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size()) return std::nullopt;
  return v;
}

std::string ReadWholeFile(const char* path) {
  std::string text;
  UniqueFd fd(::open(path, O_RDONLY | O_CLOEXEC));
  if (!fd) return text;
  char buf[64 * 1024];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  return text;
}

}  // namespace shmbroker
