#include "systemd.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <spdlog/spdlog.h>

#include "common/posix.h"

namespace shmbroker::daemon {
namespace {

// The first fd systemd passes.
constexpr int kListenFdsStart = 3;

// An environment variable as a number; nullopt when unset or not a number.
std::optional<std::uint64_t> EnvUint(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? ParseUint(v) : std::nullopt;
}

}  // namespace

Notifier::Notifier(UniqueFd sock, std::string address)
    : sock_(std::move(sock)), address_(std::move(address)) {}

std::unique_ptr<Notifier> Notifier::FromEnvironment() {
  const char* env = std::getenv("NOTIFY_SOCKET");
  if (env == nullptr || *env == '\0') return nullptr;
  std::string address = env;
  if (address[0] == '@') {
    address[0] = '\0';
  } else if (address[0] != '/') {
    spdlog::warn("NOTIFY_SOCKET={} is not a Unix socket path; not notifying", env);
    return nullptr;
  }
  if (address.size() >= sizeof(sockaddr_un::sun_path)) {
    spdlog::warn("NOTIFY_SOCKET is too long; not notifying");
    return nullptr;
  }
  UniqueFd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!sock) {
    spdlog::warn("notify socket: {}", std::strerror(errno));
    return nullptr;
  }
  return std::unique_ptr<Notifier>(new Notifier(std::move(sock), std::move(address)));
}

void Notifier::Send(std::string state, UniqueFd fd) {
  queue_.push_back({std::move(state), std::move(fd), {}});
  if (!Flush() && on_backlog) on_backlog();
}

bool Notifier::Flush() {
  while (!queue_.empty()) {
    Message& m = queue_.front();
    int err = SendNow(m.state, m.fd.get());
    if (err == EAGAIN || err == EWOULDBLOCK) return false;
    if (err != 0) {
      spdlog::warn("sd_notify '{}': {}", m.state.substr(0, m.state.find('\n')), std::strerror(err));
    }
    std::vector<std::function<void()>> sent = std::move(m.sent);
    queue_.pop_front();
    for (auto& done : sent) done();  // After the pop: a callback may queue more.
  }
  return true;
}

bool Notifier::WhenSent(std::function<void()> done) {
  if (queue_.empty()) return false;
  queue_.back().sent.push_back(std::move(done));
  return true;
}

int Notifier::SendNow(const std::string& state, int fd) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, address_.data(), address_.size());
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address_.size() +
                                         (address_[0] == '\0' ? 0 : 1));
  int fds[1] = {fd};
  FdMessage msg(std::as_bytes(std::span(state)), std::span(fds, fd >= 0 ? 1 : 0));
  msg.get()->msg_name = &addr;
  msg.get()->msg_namelen = len;
  ssize_t n;
  do {
    n = ::sendmsg(sock_.get(), msg.get(), MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  return n < 0 ? errno : 0;
}

std::optional<std::chrono::microseconds> Notifier::WatchdogInterval() {
  auto usec = EnvUint("WATCHDOG_USEC");
  if (!usec || *usec == 0) return std::nullopt;
  if (auto pid = EnvUint("WATCHDOG_PID"); pid && *pid != static_cast<std::uint64_t>(::getpid())) {
    return std::nullopt;
  }
  return std::chrono::microseconds(*usec / 2);
}

std::vector<ListenFd> TakeListenFds() {
  std::vector<ListenFd> out;
  auto pid = EnvUint("LISTEN_PID");
  auto listen_fds = EnvUint("LISTEN_FDS");
  bool ours = pid && *pid == static_cast<std::uint64_t>(::getpid()) && listen_fds;
  std::uint64_t count = listen_fds.value_or(0);
  std::string names = std::getenv("LISTEN_FDNAMES") ? std::getenv("LISTEN_FDNAMES") : "";
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");
  if (!ours) return out;
  if (count > 65536) count = 65536;
  std::size_t pos = 0;
  for (std::uint64_t i = 0; i < count; ++i) {
    int fd = kListenFdsStart + static_cast<int>(i);
    ListenFd lf;
    lf.fd.reset(fd);
    if (::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
      lf.fd.release();  // Not open: nothing to own.
    }
    std::size_t colon = names.find(':', pos);
    if (pos <= names.size())
      lf.name = names.substr(pos, colon == std::string::npos ? std::string::npos : colon - pos);
    pos = colon == std::string::npos ? names.size() + 1 : colon + 1;
    out.push_back(std::move(lf));
  }
  return out;
}

bool IsListeningSeqPacket(int fd) {
  int type = 0, listening = 0, domain = 0;
  socklen_t len = sizeof(int);
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_SEQPACKET)
    return false;
  len = sizeof(int);
  if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening)
    return false;
  len = sizeof(int);
  return ::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 && domain == AF_UNIX;
}

}  // namespace shmbroker::daemon
