#include "server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <string_view>

#include <spdlog/spdlog.h>

#include "common/posix.h"
#include "common/units.h"
#include "credentials.h"

namespace shmbroker::daemon {

namespace {

// Processes holding blocks after their connection closed whose mappings the sweep looks at.
constexpr std::size_t kMapsPerSweep = 16;

// Shared regions the sweep looks at a second for pages written outside any block (an fstat each,
// and a punch where there are some).
constexpr std::size_t kStrayRegionsPerSweep = 256;

// The default of --max-connections: a quarter of the file limit, at most 4096.
std::uint32_t DefaultMaxConnections(const FdBudget& fds) {
  return static_cast<std::uint32_t>(std::min<std::uint64_t>(4096, fds.limit() / 4));
}

UniqueFd OpenSpare() { return UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC)); }

}  // namespace

Server::Server(asio::io_context& io, ServerOptions options)
    : io_(io),
      options_(std::move(options)),
      service_(io, std::move(options_.notifier)),
      registry_(RegistryOptions{.max_memory = options_.limits.max_memory,
                                .max_memory_per_user = options_.limits.max_memory_per_user,
                                .max_segments_per_user = options_.limits.max_segments_per_user,
                                .shared_max_bytes = options_.shared_max_bytes,
                                .huge_pages = options_.huge_pages,
                                .warm_pool = std::max(options_.warm_pool, options_.prealloc),
                                .on_created =
                                    [this](const SegmentEntry& s) {
                                      if (FdStore* store = service_.fd_store()) store->Added(s);
                                    },
                                .on_removed =
                                    [this](const SegmentEntry& s) {
                                      if (FdStore* store = service_.fd_store()) store->Removed(s);
                                    }}),
      handler_(registry_, DaemonInfo{options_.version, options_.socket_path, NowUnixNs()},
               options_.limits, &fds_),
      buffer_(wire::kMaxRequestBytes + 1),  // One more: an oversized packet shows as truncated.
      acceptor_(io),
      retry_timer_(io),
      sweep_timer_(io),
      tick_timer_(io),
      pressure_timer_(io),
      signals_(io, SIGINT, SIGTERM),
      spare_(OpenSpare()),
      worker_(io) {
  if (options_.limits.max_connections == 0) {
    options_.limits.max_connections = DefaultMaxConnections(fds_);
    handler_.set_limits(options_.limits);  // What stats report.
  }
  registry_.arena().on_region = [this](const SharedRegion& r) {
    if (FdStore* store = service_.fd_store()) store->RegionAdded(r);
  };
  handler_.set_hold_until_exit([this](std::uint32_t pid, std::uint32_t uid,
                                      std::vector<std::shared_ptr<SegmentEntry>> held) {
    HoldUntilExit(pid, uid, std::move(held));
  });
  handler_.set_wake_at([this](std::int64_t unix_ns) {
    tick_timer_.expires_after(
        std::chrono::nanoseconds(std::max<std::int64_t>(0, unix_ns - NowUnixNs())));
    tick_timer_.async_wait([this](const asio::error_code& ec) {
      if (!ec && !stopped_) handler_.Tick();
    });
  });
  handler_.set_offload([this](std::function<void()> job, std::function<void()> then) {
    worker_.Run(std::move(job), std::move(then));
  });
  // The same worker: its jobs run in order, so a create queued after a zeroing finds it done.
  registry_.pool().set_offload([this](std::function<void()> job, std::function<void()> then) {
    worker_.Run(std::move(job), std::move(then));
  });
  handler_.set_may_store([this](std::uint32_t uid, std::size_t n, std::size_t record_bytes) {
    FdStore* store = service_.fd_store();
    return store != nullptr ? store->MayStore(uid, n, record_bytes) : Status::Ok();
  });
  handler_.set_when_stored([this](std::function<void()> done) {
    FdStore* store = service_.fd_store();
    return store != nullptr && store->WhenStored(std::move(done));
  });
}

Server::~Server() { Stop(); }

void Server::RestoreStored() {
  FdStore* store = service_.fd_store();
  if (store == nullptr) return;
  store->set_max_entries(options_.limits.fd_store_max);
  std::size_t restored = store->Restore(options_.inherited, registry_);
  WatchRestoredCreators();
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
  Prealloc();
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
  Sweep();
  WatchPressure();
  service_.Ready([this] { return StatusLine(); });
  return Status::Ok();
}

namespace {

// When process `pid` started, in clock ticks after boot (field 22 of /proc/PID/stat); 0 when
// unknown (gone, or /proc hides it).
std::uint64_t ProcessStartTicks(std::uint32_t pid) {
  std::string stat = ReadWholeFile(("/proc/" + std::to_string(pid) + "/stat").c_str());
  std::size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return 0;
  // Fields after the command name from 3.
  std::size_t pos = paren + 2;
  for (int field = 3; field < 22 && pos != std::string::npos; ++field) {
    pos = stat.find(' ', pos);
    if (pos != std::string::npos) ++pos;
  }
  if (pos == std::string::npos) return 0;
  return std::strtoull(stat.c_str() + pos, nullptr, 10);
}

// `ticks` after boot as Unix time (0 when unknown).
std::int64_t TicksToUnixNs(std::uint64_t ticks) {
  std::string boot = ReadWholeFile("/proc/stat");
  std::size_t b = boot.find("\nbtime ");
  if (b == std::string::npos) return 0;
  std::int64_t btime = std::strtoll(boot.c_str() + b + 7, nullptr, 10);
  long hz = ::sysconf(_SC_CLK_TCK);
  if (hz <= 0) return 0;
  return btime * 1'000'000'000 + static_cast<std::int64_t>(ticks * 1'000'000'000 / hz);
}

// Whether process `pid`, which started at `start_ticks` (0: unknown), is gone. Only a pid that
// is not there, or is another process's, counts: a /proc that cannot be read says nothing.
bool ProcessGone(std::uint32_t pid, std::uint64_t start_ticks) {
  if (start_ticks != 0) {
    if (std::uint64_t now = ProcessStartTicks(pid); now != 0) return now != start_ticks;
  }
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

}  // namespace

void Server::Sweep() {
  std::size_t closed = connections_.CloseSilent(options_.limits.handshake_timeout);
  if (closed > 0) {
    Throttled(refusals_, spdlog::level::warn,
              "closed {} connection{} that did not say hello within {} ms", closed,
              closed == 1 ? "" : "s", options_.limits.handshake_timeout.count());
  }
  // What clients wrote into shared regions outside their blocks: given back, a slice a second.
  for (const auto& [uid, bytes] : registry_.arena().DropStrays(kStrayRegionsPerSweep)) {
    Throttled(refusals_, spdlog::level::warn,
              "gave back {} that clients of uid {} wrote into its shared regions outside any "
              "segment",
              HumanBytes(bytes), uid);
  }
  // Processes watched without a pidfd.
  std::vector<std::uint32_t> gone;
  for (const auto& [pid, w] : exit_watches_) {
    if (!w.pidfd && ProcessGone(pid, w.start_ticks)) gone.push_back(pid);
  }
  for (std::uint32_t pid : gone) Exited(pid);
  ReleaseUnmapped();
  sweep_timer_.expires_after(std::chrono::seconds(1));
  sweep_timer_.async_wait([this](const asio::error_code& ec) {
    if (!ec) Sweep();
  });
}

Status Server::Admit(const Credentials& creds) {
  const Limits& l = options_.limits;
  if (creds.uid != 0) {
    if (connections_.size() >= l.max_connections) {
      registry_.refusals().Count(Limit::kConnections);
      return Status::ResourceExhausted("the daemon serves " + std::to_string(connections_.size()) +
                                       " clients already (--max-connections " +
                                       std::to_string(l.max_connections) + ")");
    }
    std::size_t mine = connections_.CountForUid(creds.uid);
    if (mine >= l.max_connections_per_user) {
      registry_.refusals().Count(Limit::kConnectionsPerUser);
      return Status::ResourceExhausted("uid " + std::to_string(creds.uid) + " has " +
                                       std::to_string(mine) +
                                       " connections already (--max-connections-per-user " +
                                       std::to_string(l.max_connections_per_user) + ")");
    }
  }
  if (!fds_.MayAccept(creds.uid)) {
    registry_.refusals().Count(Limit::kFileDescriptors);
    return Status::ResourceExhausted("the daemon is near its limit of open files (" +
                                     std::to_string(fds_.in_use()) + " of " +
                                     std::to_string(fds_.limit()) + " in use)");
  }
  return Status::Ok();
}

void Server::Refuse(int fd, const Credentials& creds, const Status& why) {
  wire::Reply reply;
  reply.set_code(static_cast<wire::Code>(why.code()));
  reply.set_message(why.message());
  std::string bytes = reply.SerializeAsString();
  // Non-blocking: a client that does not read gets its connection closed all the same.
  (void)wire::SendPacket(fd, std::as_bytes(std::span(bytes)), {}, /*nonblocking=*/true);
  wire::ShutdownForClose(fd, buffer_);
  Throttled(refusals_, spdlog::level::warn, "refused a connection of uid {} pid {}: {}", creds.uid,
            creds.pid, why.message());
}

void Server::AcceptWithSpare() {
  spare_.reset();
  UniqueFd fd(::accept4(acceptor_.native_handle(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (fd) {
    Credentials creds = PeerCredentials(fd.get());
    registry_.refusals().Count(Limit::kFileDescriptors);
    Refuse(fd.get(), creds,
           Status::ResourceExhausted("the daemon has no file descriptor left for a connection"));
  }
  fd.reset();
  spare_ = OpenSpare();
}

std::string Server::StatusLine() const {
  return std::to_string(registry_.size()) + " segments, " + std::to_string(registry_.bytes_held()) +
         " bytes, " + std::to_string(handler_.clients()) + " clients";
}

void Server::Accept() {
  acceptor_.async_accept([this](const asio::error_code& ec, SeqPacket::socket socket) {
    if (!acceptor_.is_open()) return;
    if (ec == asio::error::no_descriptors && spare_) {
      // Never stall with clients queued: take them one by one on the spare and refuse them.
      AcceptWithSpare();
      return Accept();
    }
    if (ec) {
      if (ec == asio::error::operation_aborted) return;
      // Back off instead of spinning on a listener that stays readable.
      Throttled(refusals_, spdlog::level::warn, "accept: {}", ec.message());
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
    if (Status s = Admit(session.creds); !s.ok()) {
      Refuse(socket.native_handle(), session.creds, s);
      socket.close(ignored);
      return Accept();
    }
    connections_.Start(std::make_shared<Connection>(std::move(socket), handler_, connections_,
                                                    std::move(session), buffer_));
    Accept();
  });
}

void Server::HoldUntilExit(std::uint32_t pid, std::uint32_t uid,
                           std::vector<std::shared_ptr<SegmentEntry>> held) {
  // Until the process exits or no longer maps their memory (see Sweep), or the daemon stops.
  ExitWatch* w = Watch(pid, uid, std::numeric_limits<std::int64_t>::max());
  if (w == nullptr) return;  // Gone already.
  w->held.insert(w->held.end(), std::make_move_iterator(held.begin()),
                 std::make_move_iterator(held.end()));
}

void Server::WhenExited(std::uint32_t pid, std::uint32_t uid, std::int64_t not_after_unix_ns,
                        std::function<void()> exited) {
  ExitWatch* w = Watch(pid, uid, not_after_unix_ns);
  if (w == nullptr) return exited();
  w->on_exit.push_back(std::move(exited));
}

Server::ExitWatch* Server::Watch(std::uint32_t pid, std::uint32_t uid,
                                 std::int64_t not_after_unix_ns) {
  std::uint64_t ticks = ProcessStartTicks(pid);
  if (ticks == 0 && ProcessGone(pid, 0)) return nullptr;
  // btime is whole seconds: a second of slack.
  std::int64_t started = ticks != 0 ? TicksToUnixNs(ticks) : 0;
  if (started != 0 && started - 1'000'000'000 > not_after_unix_ns) return nullptr;
  if (auto it = exit_watches_.find(pid); it != exit_watches_.end()) {
    if (it->second.start_ticks == ticks) return &it->second;
    Exited(pid);  // Another process had the pid, and is gone.
  }
  int fd = -1;
  if (fds_.MayWatch(uid)) {  // Else, or without pidfd (Linux < 5.3), Sweep looks.
    fd = static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0));
    if (fd < 0 && errno == ESRCH) return nullptr;
  }
  ExitWatch& w = exit_watches_[pid];
  w.start_ticks = ticks;
  w.uid = uid;
  if (fd < 0) return &w;
  w.pidfd = std::make_unique<asio::posix::stream_descriptor>(io_, fd);
  fds_.WatchOpened(uid);
  w.pidfd->async_wait(
      asio::posix::stream_descriptor::wait_read, [this, pid, ticks](const asio::error_code& ec) {
        auto it = exit_watches_.find(pid);
        if (ec || stopped_ || it == exit_watches_.end() || it->second.start_ticks != ticks) {
          return;
        }
        Exited(pid);
      });
  return &w;
}

void Server::Exited(std::uint32_t pid) {
  auto it = exit_watches_.find(pid);
  if (it == exit_watches_.end()) return;
  ExitWatch w = std::move(it->second);
  exit_watches_.erase(it);
  if (w.pidfd) {
    asio::error_code ignored;
    w.pidfd->close(ignored);
    fds_.WatchClosed(w.uid);
  }
  for (auto& f : w.on_exit) f();
}

namespace {

// The inodes of the shmbroker memfds process `pid` maps now; nullopt when unknown.
std::optional<std::set<std::uint64_t>> MappedMemfds(std::uint32_t pid) {
  std::string maps = ReadWholeFile(("/proc/" + std::to_string(pid) + "/maps").c_str());
  if (maps.empty()) return std::nullopt;  // Gone, or hidden from us.
  std::set<std::uint64_t> inodes;
  std::size_t pos = 0;
  while (pos < maps.size()) {
    std::size_t end = maps.find('\n', pos);
    if (end == std::string::npos) end = maps.size();
    std::string_view line(maps.data() + pos, end - pos);
    pos = end + 1;
    if (line.find("/memfd:shmbroker") == std::string_view::npos) continue;
    // address perms offset dev inode path
    std::size_t field = 0, i = 0;
    while (field < 4 && i < line.size()) {
      if (line[i++] == ' ') {
        ++field;
        while (i < line.size() && line[i] == ' ') ++i;
      }
    }
    inodes.insert(std::strtoull(std::string(line.substr(i, 24)).c_str(), nullptr, 10));
  }
  return inodes;
}

}  // namespace

void Server::ReleaseUnmapped() {
  // A few processes a sweep, in turn: each costs a read of its /proc/PID/maps.
  std::vector<std::shared_ptr<SegmentEntry>> released;  // Dropped after the loop.
  std::vector<std::uint32_t> done;
  auto it = exit_watches_.upper_bound(maps_after_pid_);
  for (std::size_t n = 0; n < kMapsPerSweep && n < exit_watches_.size(); ++n) {
    if (it == exit_watches_.end()) it = exit_watches_.begin();
    auto& [pid, w] = *it;
    maps_after_pid_ = pid;
    ++it;
    if (w.held.empty()) continue;
    auto mapped = MappedMemfds(pid);
    if (!mapped) continue;
    std::erase_if(w.held, [&](std::shared_ptr<SegmentEntry>& s) {
      for (std::uint64_t ino : s->inodes()) {
        if (ino != 0 && mapped->count(ino) != 0) return false;
      }
      released.push_back(std::move(s));
      return true;
    });
    if (w.held.empty() && w.on_exit.empty()) done.push_back(pid);
  }
  for (std::uint32_t pid : done) Exited(pid);  // Nothing left to wait for: its pidfd closes.
}

void Server::WatchRestoredCreators() {
  for (auto& c : registry_.TakeRestoredCreators()) {
    auto s = c.segment.lock();
    if (!s) continue;
    WhenExited(c.pid, s->uid(), c.created_unix_ns, [this, weak = c.segment] {
      if (auto s = weak.lock()) registry_.CreatorExited(s);
    });
  }
}

void Server::Prealloc() {
  std::uint64_t size = options_.prealloc;
  if (size == 0) return;
  // Before serving, as Plasma's -m: the first create finds the pool full. Filling in the
  // background instead made a create that came meanwhile queue behind the fill on the worker and
  // then miss the pool (5 s for 800 MB in the seed benchmark, against 0.1 s).
  auto start = std::chrono::steady_clock::now();
  auto memory = CreateSegmentMemfd("shmbroker:warm-pool", size, options_.huge_pages,
                                   /*seal_size=*/false);
  if (!memory.ok()) {
    spdlog::error("--prealloc {}: {}; starting with an empty pool", HumanBytes(size),
                  memory.status().message());
    return;
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  start);
  spdlog::info("warm pool: preallocated {} ({} on 2 MiB pages) in {} ms", HumanBytes(size),
               HumanBytes(memory->huge_bytes), ms.count());
  registry_.pool().PutUnowned(std::move(memory->fd), size, memory->huge_bytes);
}

void Server::WatchPressure() {
  if (registry_.pool().max_bytes() == 0) return;
  // MemAvailable moves slowly next to this: a look every 2 s costs ~20 us.
  pressure_timer_.expires_after(std::chrono::seconds(2));
  pressure_timer_.async_wait([this](const asio::error_code& ec) {
    if (ec || stopped_) return;
    registry_.RelievePressure();
    WatchPressure();
  });
}

void Server::Stop() {
  if (stopped_) return;
  stopped_ = true;
  registry_.pool().Close();  // The worker is going: nothing more is zeroed or kept.
  // Clients may still map blocks that connections closing now release.
  registry_.arena().Freeze();
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
  sweep_timer_.cancel();
  tick_timer_.cancel();
  pressure_timer_.cancel();
  connections_.StopAll();
  for (auto& [pid, w] : exit_watches_) {
    if (w.pidfd) fds_.WatchClosed(w.uid);
  }
  exit_watches_.clear();  // What they held goes with the daemon.
  listener_.reset();      // Removes the socket file if it is still ours.
}

}  // namespace shmbroker::daemon
