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
#include "common/trust.h"

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

namespace {

// Where every user is meant to connect (a root daemon's socket, /run) the directory is 0755;
// a user's own daemon keeps it 0700.
mode_t DirectoryMode(const std::string& dir) {
  if (::geteuid() == 0) return 0755;
  bool under_run = dir.rfind("/run/", 0) == 0 && dir.rfind("/run/user/", 0) != 0;
  return under_run ? 0755 : 0700;
}

// Opens the socket directory `dir`, creating it (and missing parents) when absent, through an fd
// that does not follow a symlink, and checks that only this user or root can change what is in it.
Result<UniqueFd> OpenSocketDirectory(const std::string& dir) {
  namespace fs = std::filesystem;
  mode_t mode = DirectoryMode(dir);
  std::error_code ec;
  fs::path parent = fs::path(dir).parent_path();
  if (!parent.empty() && !fs::exists(parent, ec)) {
    fs::create_directories(parent, ec);
    if (ec) {
      return Status::Internal("cannot create '" + parent.string() + "': " + ec.message());
    }
  }
  bool created = ::mkdir(dir.c_str(), mode) == 0;
  if (!created && errno != EEXIST) {
    return PosixError("cannot create the socket directory '" + dir + "'", errno);
  }
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) {
    int err = errno;
    if (err == ELOOP || err == ENOTDIR) {
      return Status::FailedPrecondition(
          "the socket directory '" + dir + "' is a symbolic link or not a directory; refusing " +
          "to follow it (another user may have planted it). Remove it, or choose another path " +
          "with --socket");
    }
    return PosixError("cannot open the socket directory '" + dir + "'", err);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return PosixError("fstat '" + dir + "'", errno);
  if (Status s = CheckPrivateDirectory(st, dir, ::geteuid()); !s.ok()) return s;
  // The umask may have narrowed a directory that others must be able to enter. Through the fd,
  // which is the checked directory.
  if (created && (st.st_mode & 07777) != mode && ::fchmod(fd.get(), mode) != 0) {
    return PosixError("chmod '" + dir + "'", errno);
  }
  return fd;
}

// The path of `name` inside the directory open as `dirfd`, reached through the fd so that
// nothing along the original path can be swapped in the meantime. Where that does not fit in a
// socket address (or /proc is missing), the name relative to the working directory, which
// WithCwd sets to the fd.
std::string InDirectory(int dirfd, const std::string& name) {
  std::string via_proc = "/proc/self/fd/" + std::to_string(dirfd) + "/" + name;
  if (MakeUnixAddress(via_proc).ok() && ::access("/proc/self/fd", F_OK) == 0) return via_proc;
  return name;
}

// Runs `f` with the working directory set to `dirfd` when `path` is relative (see InDirectory).
// Only at start-up and exit, while no other thread resolves paths.
template <typename F>
auto WithCwd(int dirfd, const std::string& path, F f) {
  if (path.front() == '/') return f();
  UniqueFd cwd(::open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cwd || ::fchdir(dirfd) != 0) return f();  // Fails at bind, naming the path.
  auto result = f();
  int err = errno;
  if (::fchdir(cwd.get()) != 0) spdlog::warn("cannot return to the working directory");
  errno = err;
  return result;
}

}  // namespace

Result<Listener> Listener::Bind(const std::string& path) {
  if (Status s = MakeUnixAddress(path).status(); !s.ok()) return s;
  std::filesystem::path p(path);
  std::string dir = p.parent_path().empty() ? "." : p.parent_path().string();
  std::string name = p.filename().string();
  if (name.empty() || name == "." || name == "..") {
    return Status::InvalidArgument("socket path '" + path + "' does not name a file");
  }
  Result<UniqueFd> dirfd = OpenSocketDirectory(dir);
  if (!dirfd.ok()) return dirfd.status();
  Listener l;
  l.dir_ = std::move(*dirfd);
  std::string via_fd = InDirectory(l.dir_.get(), name);
  auto addr = MakeUnixAddress(via_fd);
  if (!addr.ok()) return addr.status();

  struct stat st {};
  if (::fstatat(l.dir_.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::FailedPrecondition("'" + path +
                                        "' exists and is not a socket; refusing to replace it");
    }
    if (WithCwd(l.dir_.get(), via_fd, [&] { return DaemonAnswers(via_fd); })) {
      return Status::FailedPrecondition("another shmbrokerd is already serving '" + path + "'");
    }
    if (st.st_uid != ::geteuid()) {
      return Status::FailedPrecondition("'" + path + "' is a stale socket of uid " +
                                        DescribeUid(st.st_uid) +
                                        ", not this daemon's; remove it yourself if it is stale");
    }
    spdlog::info("removing stale socket {}", path);
    if (::unlinkat(l.dir_.get(), name.c_str(), 0) != 0 && errno != ENOENT) {
      return PosixError("cannot remove stale socket '" + path + "'", errno);
    }
  }
  l.fd_.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!l.fd_) return PosixError("socket", errno);
  // Access control is per segment: everyone may connect (0666). The mode comes from the umask at
  // bind, never from a chmod by path, which another user could redirect.
  mode_t old_umask = ::umask(0111);
  int rc =
      WithCwd(l.dir_.get(), via_fd, [&] { return ::bind(l.fd_.get(), addr->get(), addr->length); });
  int err = errno;
  ::umask(old_umask);
  if (rc != 0) {
    if (err == EADDRINUSE) {
      return Status::FailedPrecondition("another shmbrokerd is already serving '" + path + "'");
    }
    return PosixError("cannot bind '" + path + "'", err);
  }
  l.path_ = path;
  l.name_ = name;
  l.bound_ = true;
  if (::fstatat(l.dir_.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) l.inode_ = st.st_ino;
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
    : fd_(std::move(o.fd_)),
      dir_(std::move(o.dir_)),
      path_(std::move(o.path_)),
      name_(std::move(o.name_)),
      bound_(o.bound_),
      inode_(o.inode_) {
  o.bound_ = false;
}

Listener& Listener::operator=(Listener&& o) noexcept {
  if (this != &o) {
    RemoveFile();
    fd_ = std::move(o.fd_);
    dir_ = std::move(o.dir_);
    path_ = std::move(o.path_);
    name_ = std::move(o.name_);
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
  if (::fstatat(dir_.get(), name_.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_ino == inode_) {
    ::unlinkat(dir_.get(), name_.c_str(), 0);
  }
}

}  // namespace shmbroker::daemon
