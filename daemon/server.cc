#include "server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <cstddef>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include <spdlog/spdlog.h>

#include "common/units.h"

namespace shmbroker::daemon {
namespace {

std::int64_t NowUnixNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool MakeAddress(const std::string& path, sockaddr_un& addr) {
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) return false;
  std::memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  return true;
}

}  // namespace

bool DaemonAnswers(const std::string& path) {
  sockaddr_un addr;
  if (!MakeAddress(path, addr)) return false;
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return false;
  int rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  // EAGAIN: a listener whose backlog is full is alive all the same.
  return rc == 0 || errno == EAGAIN;
}

Server::Server(asio::io_context& io, ServerOptions options)
    : io_(io),
      options_(std::move(options)),
      registry_(RegistryOptions{.max_memory = options_.max_memory,
                                .on_created =
                                    [this](const Segment& s) {
                                      if (fd_store_) fd_store_->Added(s);
                                    },
                                .on_removed =
                                    [this](const Segment& s) {
                                      if (fd_store_) fd_store_->Removed(s);
                                    }}),
      handler_(registry_, ServerInfo{options_.version, options_.socket_path, NowUnixNs()}),
      acceptor_(io),
      retry_timer_(io),
      tick_timer_(io),
      notify_timer_(io) {
  if (options_.notifier) {
    fd_store_.emplace(*options_.notifier);
    options_.notifier->on_backlog = [this] { ScheduleNotifyFlush(); };
  }
}

void Server::ScheduleNotifyFlush() {
  if (notify_retry_pending_) return;
  notify_retry_pending_ = true;
  notify_timer_.expires_after(std::chrono::milliseconds(5));
  notify_timer_.async_wait([this](const asio::error_code& ec) {
    notify_retry_pending_ = false;
    if (!ec && !options_.notifier->Flush()) ScheduleNotifyFlush();
  });
}

Server::~Server() { Stop(); }

Status Server::Listen() {
  UniqueFd listener;
  for (auto& lf : options_.inherited) {
    if (lf.fd && !listener && IsListeningSeqPacket(lf.fd.get())) listener = std::move(lf.fd);
  }
  // Segments that survived a restart come back before the first client is served.
  if (fd_store_) {
    std::size_t restored = fd_store_->Restore(options_.inherited, registry_);
    if (restored > 0) {
      spdlog::info("restored {} segments ({}) from the service manager's fd store", restored,
                   HumanBytes(registry_.bytes_held()));
    }
  }
  for (auto& lf : options_.inherited) {
    if (lf.fd) spdlog::warn("ignoring inherited fd {} named '{}'", lf.fd.get(), lf.name);
  }
  options_.inherited.clear();

  if (listener) {
    sockaddr_un addr{};
    socklen_t len = sizeof(addr);
    if (::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
        len > offsetof(sockaddr_un, sun_path) && addr.sun_path[0] != '\0') {
      options_.socket_path.assign(addr.sun_path,
                                  ::strnlen(addr.sun_path, len - offsetof(sockaddr_un, sun_path)));
      handler_.set_socket_path(options_.socket_path);
    }
    ::fcntl(listener.get(), F_SETFL, ::fcntl(listener.get(), F_GETFL) | O_NONBLOCK);
    asio::error_code ec;
    acceptor_.assign(SeqPacket(AF_UNIX, SOCK_SEQPACKET), listener.get(), ec);
    if (ec) return Status::Internal("adopting the inherited listening socket: " + ec.message());
    listener.release();
    spdlog::info("using the listening socket passed by the service manager");
  } else if (Status s = Bind(); !s.ok()) {
    return s;
  }
  Accept();
  if (options_.notifier) {
    watchdog_ = Notifier::WatchdogInterval();
    options_.notifier->Send("READY=1\nSTATUS=" + StatusLine());
    Tick();
  }
  return Status::Ok();
}

std::string Server::StatusLine() const {
  return std::to_string(registry_.size()) + " segments, " + std::to_string(registry_.bytes_held()) +
         " bytes, " + std::to_string(handler_.clients()) + " clients";
}

void Server::Tick() {
  if (stopped_) return;
  if (watchdog_) options_.notifier->Send("WATCHDOG=1");
  if (std::string status = StatusLine(); status != last_status_) {
    options_.notifier->Send("STATUS=" + status);
    last_status_ = std::move(status);
  }
  // STATUS is refreshed once a second; the watchdog at half its timeout if that is sooner.
  std::chrono::steady_clock::duration next = std::chrono::seconds(1);
  if (watchdog_ && *watchdog_ < next) next = *watchdog_;
  tick_timer_.expires_after(next);
  tick_timer_.async_wait([this](const asio::error_code& ec) {
    if (!ec) Tick();
  });
}

Status Server::Bind() {
  const std::string& path = options_.socket_path;
  sockaddr_un addr;
  if (!MakeAddress(path, addr)) {
    return Status::InvalidArgument("socket path '" + path + "' is empty or longer than " +
                                   std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
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
      return Status::Internal("cannot remove stale socket '" + path + "': " + std::strerror(errno));
    }
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd) return Status::Internal(std::string("socket: ") + std::strerror(errno));
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    if (err == EADDRINUSE) {
      return Status::FailedPrecondition("another shmbrokerd is already serving '" + path + "'");
    }
    return Status::Internal("cannot bind '" + path + "': " + std::strerror(err));
  }
  bound_ = true;
  if (::lstat(path.c_str(), &st) == 0) socket_ino_ = st.st_ino;
  // Access control is per segment: everyone may connect.
  if (::chmod(path.c_str(), 0666) != 0) {
    return Status::Internal("cannot chmod '" + path + "': " + std::strerror(errno));
  }
  if (::listen(fd.get(), SOMAXCONN) != 0) {
    return Status::Internal(std::string("listen: ") + std::strerror(errno));
  }
  asio::error_code ec;
  acceptor_.assign(SeqPacket(AF_UNIX, SOCK_SEQPACKET), fd.get(), ec);
  if (ec) return Status::Internal("adopting the listening socket: " + ec.message());
  fd.release();
  acceptor_.non_blocking(true, ec);
  return Status::Ok();
}

void Server::Accept() {
  acceptor_.async_accept([this](const asio::error_code& ec, SeqPacket::socket socket) {
    if (!acceptor_.is_open()) return;
    if (ec) {
      if (ec == asio::error::operation_aborted) return;
      // EMFILE and friends: back off instead of spinning on a listener that stays readable.
      spdlog::warn("accept: {}", ec.message());
      retry_timer_.expires_after(std::chrono::milliseconds(100));
      retry_timer_.async_wait([this](const asio::error_code& e) {
        if (!e) Accept();
      });
      return;
    }
    asio::error_code ignored;
    socket.non_blocking(true, ignored);
    Session session;
    session.id = next_session_id_++;
    session.creds = PeerCredentials(socket.native_handle());
    connections_.Start(std::make_shared<Connection>(std::move(socket), handler_, connections_,
                                                    std::move(session)));
    Accept();
  });
}

void Server::Stop() {
  if (stopped_) return;
  stopped_ = true;
  std::size_t n = registry_.size();
  std::string what = std::to_string(n) + " segment" + (n == 1 ? "" : "s") + " (" +
                     HumanBytes(registry_.bytes_held()) + ")";
  if (fd_store_) {
    spdlog::info("stopping: {} stay in the service manager's fd store for the next start", what);
  } else {
    spdlog::info("stopping: discarding {}", what);
  }
  if (options_.notifier) {
    options_.notifier->Send("STOPPING=1");
    // The loop is ending: give the manager a moment to take what is still queued.
    for (int i = 0; i < 100 && !options_.notifier->Flush(); ++i) ::usleep(10 * 1000);
    notify_timer_.cancel();
  }
  asio::error_code ignored;
  acceptor_.close(ignored);
  retry_timer_.cancel();
  tick_timer_.cancel();
  connections_.StopAll();
  if (bound_) {
    // Remove the file only if it is still ours (a successor may have replaced it).
    struct stat st {};
    if (::lstat(options_.socket_path.c_str(), &st) == 0 && st.st_ino == socket_ino_) {
      ::unlink(options_.socket_path.c_str());
    }
    bound_ = false;
  }
}

}  // namespace shmbroker::daemon
