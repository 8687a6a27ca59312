#include "server.h"

#include <spdlog/spdlog.h>

#include "common/posix.h"
#include "common/units.h"
#include "credentials.h"

namespace shmbroker::daemon {

Server::Server(asio::io_context& io, ServerOptions options)
    : io_(io),
      options_(std::move(options)),
      service_(io, std::move(options_.notifier)),
      registry_(RegistryOptions{.max_memory = options_.max_memory,
                                .on_created =
                                    [this](const SegmentEntry& s) {
                                      if (FdStore* store = service_.fd_store()) store->Added(s);
                                    },
                                .on_removed =
                                    [this](const SegmentEntry& s) {
                                      if (FdStore* store = service_.fd_store()) store->Removed(s);
                                    }}),
      handler_(registry_, DaemonInfo{options_.version, options_.socket_path, NowUnixNs()}),
      acceptor_(io),
      retry_timer_(io),
      signals_(io, SIGINT, SIGTERM) {}

Server::~Server() { Stop(); }

void Server::RestoreStored() {
  FdStore* store = service_.fd_store();
  if (store == nullptr) return;
  std::size_t restored = store->Restore(options_.inherited, registry_);
  if (restored > 0) {
    spdlog::info("restored {} segments ({}) from the service manager's fd store", restored,
                 HumanBytes(registry_.bytes_held()));
  }
}

Status Server::Start() {
  UniqueFd inherited_listener;
  for (auto& lf : options_.inherited) {
    if (lf.fd && !inherited_listener && IsListeningSeqPacket(lf.fd.get())) {
      inherited_listener = std::move(lf.fd);
    }
  }
  // Segments that survived a restart come back before the first client is served.
  RestoreStored();
  for (auto& lf : options_.inherited) {
    if (lf.fd) spdlog::warn("ignoring inherited fd {} named '{}'", lf.fd.get(), lf.name);
  }
  options_.inherited.clear();

  Result<Listener> listener = inherited_listener ? Listener::Adopt(std::move(inherited_listener))
                                                 : Listener::Bind(options_.socket_path);
  if (!listener.ok()) return listener.status();
  listener_.emplace(std::move(listener).value());
  if (!listener_->bound()) {
    spdlog::info("using the listening socket passed by the service manager");
    if (!listener_->path().empty()) {
      options_.socket_path = listener_->path();
      handler_.set_socket_path(options_.socket_path);
    }
  }
  asio::error_code ec;
  UniqueFd fd = listener_->TakeFd();
  acceptor_.assign(SeqPacket(AF_UNIX, SOCK_SEQPACKET), fd.get(), ec);
  if (ec) return Status::Internal("adopting the listening socket: " + ec.message());
  fd.release();
  acceptor_.non_blocking(true, ec);
  Accept();

  signals_.async_wait([this](const asio::error_code& ec, int signo) {
    if (ec) return;
    spdlog::info("received {}, shutting down", signo == SIGINT ? "SIGINT" : "SIGTERM");
    Stop();
    io_.stop();
  });
  service_.Ready([this] { return StatusLine(); });
  return Status::Ok();
}

std::string Server::StatusLine() const {
  return std::to_string(registry_.size()) + " segments, " + std::to_string(registry_.bytes_held()) +
         " bytes, " + std::to_string(handler_.clients()) + " clients";
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
  if (service_.active()) {
    spdlog::info("stopping: {} stay in the service manager's fd store for the next start", what);
  } else {
    spdlog::info("stopping: discarding {}", what);
  }
  service_.Stopping();
  asio::error_code ignored;
  signals_.cancel(ignored);
  acceptor_.close(ignored);
  retry_timer_.cancel();
  connections_.StopAll();
  listener_.reset();  // Removes the socket file if it is still ours.
}

}  // namespace shmbroker::daemon
