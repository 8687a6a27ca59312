#include "server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include <spdlog/spdlog.h>

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
  wire::UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return false;
  int rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  // EAGAIN: a listener whose backlog is full is alive all the same.
  return rc == 0 || errno == EAGAIN;
}

Server::Server(asio::io_context& io, ServerOptions options)
    : io_(io),
      options_(std::move(options)),
      registry_(RegistryOptions{.max_memory = options_.max_memory}),
      handler_(registry_, ServerInfo{options_.version, options_.socket_path, NowUnixNs()}),
      acceptor_(io),
      retry_timer_(io) {}

Server::~Server() { Stop(); }

Status Server::Listen() {
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
  wire::UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
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
  Accept();
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
  if (!acceptor_.is_open() && connections_.size() == 0 && !bound_) return;
  asio::error_code ignored;
  acceptor_.close(ignored);
  retry_timer_.cancel();
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
