#include "listener.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>

#include <spdlog/spdlog.h>

#include "common/posix.h"

namespace shmbroker::daemon {

bool DaemonAnswers(const std::string& path) {
  auto addr = MakeUnixAddress(path);
  if (!addr.ok()) return false;
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return false;
  int rc = ::connect(fd.get(), addr->get(), addr->length);
  // EAGAIN: a listener whose backlog is full is alive all the same.
  return rc == 0 || errno == EAGAIN;
}

Result<Listener> Listener::Bind(const std::string& path) {
  auto addr = MakeUnixAddress(path);
  if (!addr.ok()) return addr.status();
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) {
      return Status::Internal("cannot create the socket directory " + parent.string() + ": " +
                              ec.message());
    }
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::FailedPrecondition("'" + path +
                                        "' exists and is not a socket; refusing to replace it");
    }
    if (DaemonAnswers(path)) {
      return Status::FailedPrecondition("another shmbrokerd is already serving '" + path + "'");
    }
    spdlog::info("removing stale socket {}", path);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return PosixError("cannot remove stale socket '" + path + "'", errno);
    }
  }
  Listener l;
  l.fd_.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!l.fd_) return PosixError("socket", errno);
  if (::bind(l.fd_.get(), addr->get(), addr->length) != 0) {
    int err = errno;
    if (err == EADDRINUSE) {
      return Status::FailedPrecondition("another shmbrokerd is already serving '" + path + "'");
    }
    return PosixError("cannot bind '" + path + "'", err);
  }
  l.path_ = path;
  l.bound_ = true;
  if (::lstat(path.c_str(), &st) == 0) l.inode_ = st.st_ino;
  // Access control is per segment: everyone may connect.
  if (::chmod(path.c_str(), 0666) != 0) return PosixError("cannot chmod '" + path + "'", errno);
  if (::listen(l.fd_.get(), SOMAXCONN) != 0) return PosixError("listen", errno);
  return l;
}

Result<Listener> Listener::Adopt(UniqueFd fd) {
  Listener l;
  sockaddr_un addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
      len > offsetof(sockaddr_un, sun_path) && addr.sun_path[0] != '\0') {
    // sun_path need not end in a NUL: the length getsockname gives is what counts.
    l.path_.assign(addr.sun_path, ::strnlen(addr.sun_path, len - offsetof(sockaddr_un, sun_path)));
  }
  if (::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK) != 0) {
    return PosixError("making the inherited listening socket non-blocking", errno);
  }
  l.fd_ = std::move(fd);
  return l;
}

Listener::Listener(Listener&& o) noexcept
    : fd_(std::move(o.fd_)), path_(std::move(o.path_)), bound_(o.bound_), inode_(o.inode_) {
  o.bound_ = false;
}

Listener& Listener::operator=(Listener&& o) noexcept {
  if (this != &o) {
    RemoveFile();
    fd_ = std::move(o.fd_);
    path_ = std::move(o.path_);
    bound_ = std::exchange(o.bound_, false);
    inode_ = o.inode_;
  }
  return *this;
}

Listener::~Listener() { RemoveFile(); }

void Listener::RemoveFile() {
  if (!bound_) return;
  bound_ = false;
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0 && st.st_ino == inode_) ::unlink(path_.c_str());
}

}  // namespace shmbroker::daemon
