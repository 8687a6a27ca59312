#include "test_daemon.h"

#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace shmbroker::testing {

using namespace std::chrono_literals;

// Every daemon these tests start ignores a configuration file the machine may have
// (/etc/shmbroker/shmbrokerd.conf): an empty $SHMBROKERD_CONFIG means none, and children inherit
// it. Set before main().
[[maybe_unused]] const bool kNoMachineConfig = ::setenv("SHMBROKERD_CONFIG", "", 1) == 0;

TestDaemon::TestDaemon(DaemonOptions options) {
  char tmpl[] = "/tmp/shmbroker-it-XXXXXX";
  dir_ = ::mkdtemp(tmpl);
  ::chmod(dir_.c_str(), 0755);  // Reachable by children that drop to another uid.
  uid_ = options.uid;
  if (uid_ >= 0 && ::chown(dir_.c_str(), uid_, uid_) != 0) ADD_FAILURE() << "chown " << dir_;
  socket_ = dir_ + "/s.sock";
  log_path_ = dir_ + "/daemon.log";
  std::vector<std::string> args = {SHMBROKERD_PATH};
  if (!options.only_args) args.insert(args.end(), {"--socket", socket_, "--log-level", "warn"});
  args.insert(args.end(), options.args.begin(), options.args.end());
  pid_ = ::fork();
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // No daemon outlives a crashed test.
    int fd = options.output_fd >= 0
                 ? options.output_fd
                 : ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    if (options.nofile_soft != 0 || options.nofile_hard != 0) {
      struct rlimit rl {};
      ::getrlimit(RLIMIT_NOFILE, &rl);
      if (options.nofile_soft != 0) rl.rlim_cur = options.nofile_soft;
      if (options.nofile_hard != 0) rl.rlim_max = options.nofile_hard;
      rl.rlim_cur = std::min(rl.rlim_cur, rl.rlim_max);
      ::setrlimit(RLIMIT_NOFILE, &rl);
    }
    for (auto& e : options.env) ::putenv(e.data());
    if (options.listen_fd >= 0) {
      // dup2 clears close-on-exec, except when the fd is 3 already.
      if (options.listen_fd == 3) {
        ::fcntl(3, F_SETFD, 0);
      } else {
        ::dup2(options.listen_fd, 3);
      }
      ::setenv("LISTEN_FDS", "1", 1);
      ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
    }
    if (uid_ >= 0 && !DropTo(uid_, uid_)) ::_exit(126);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  if (!options.wait_until_serving) return;
  bool up = Eventually([&] { return !alive() || Connect().ok(); }, 10s);
  EXPECT_TRUE(up && alive()) << "shmbrokerd did not start:\n" << log();
}

TestDaemon::~TestDaemon() {
  if (pid_ > 0 && !exit_status_) {
    ::kill(pid_, SIGTERM);
    int status = Wait();
    if (status == -1) ADD_FAILURE() << "shmbrokerd did not stop on SIGTERM within 10 s";
    EXPECT_EQ(status, 0) << "shmbrokerd ended with status " << status << ":\n" << log();
  }
  std::filesystem::remove_all(dir_);
}

bool TestDaemon::alive() {
  if (pid_ <= 0 || exit_status_) return false;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) != pid_) return true;
  exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return false;
}

int TestDaemon::Wait(std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (alive()) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      exit_status_ = -1;
      break;
    }
    std::this_thread::sleep_for(5ms);
  }
  return exit_status_.value_or(-1);
}

int TestDaemon::Terminate() {
  if (alive()) ::kill(pid_, SIGTERM);
  return Wait();
}

std::string TestDaemon::log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Result<Client> TestDaemon::ConnectWithin(const std::string& path, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    auto c = Client::Connect({.socket_path = path, .client_name = "test"});
    if (c.ok() || std::chrono::steady_clock::now() > deadline) return c;
    std::this_thread::sleep_for(10ms);
  }
}

Result<Client> TestDaemon::Connect(std::string name) const {
  std::optional<uid_t> trusted;
  if (uid_ >= 0) trusted = uid_;
  return Client::Connect(
      {.socket_path = socket_, .client_name = std::move(name), .trusted_uid = trusted});
}

Client TestDaemon::MustConnect(std::string name) const {
  auto c = Connect(std::move(name));
  if (!c.ok()) {
    ADD_FAILURE() << c.status().ToString();
    std::abort();
  }
  return std::move(c).value();
}

HoldingChild::HoldingChild(const std::function<int(const std::function<void()>&)>& hold, int uid) {
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) {
    ADD_FAILURE() << "pipe: " << std::strerror(errno);
    return;
  }
  pid_ = ::fork();
  if (pid_ == 0) {
    ::close(pipefd[0]);
    if (uid >= 0 && !DropTo(uid, uid)) ::_exit(125);
    int rc = hold([&] {
      (void)!::write(pipefd[1], "r", 1);
      for (;;) ::pause();  // Until killed.
    });
    ::_exit(rc == 0 ? 1 : rc);  // Returning at all means it never got ready.
  }
  ::close(pipefd[1]);
  pollfd p{pipefd[0], POLLIN, 0};
  char r = 0;
  ready_ = ::poll(&p, 1, 10000) == 1 && ::read(pipefd[0], &r, 1) == 1 && r == 'r';
  ::close(pipefd[0]);
}

HoldingChild::~HoldingChild() {
  if (pid_ > 0) Kill();
}

bool HoldingChild::Kill() {
  if (pid_ <= 0) return false;
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

bool DropTo(int uid, int gid) {
  return ::setgroups(0, nullptr) == 0 && ::setgid(gid) == 0 && ::setuid(uid) == 0;
}

int RunInChild(const std::function<int()>& fn, int uid) {
  pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    if (uid >= 0 && !DropTo(uid, uid)) ::_exit(125);
    int rc = fn();
    ::_exit(::testing::Test::HasFailure() ? 126 : rc);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string ScratchSocket(std::string_view stem) {
  return "/tmp/" + std::string(stem) + "-" + std::to_string(::getpid()) + ".sock";
}

bool Eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

std::size_t OpenFdCount(pid_t pid) {
  std::string dir = pid == 0 ? "/proc/self/fd" : "/proc/" + std::to_string(pid) + "/fd";
  std::size_t n = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(dir)) ++n;
  return n;
}

std::size_t SegmentMappingCount() {
  std::ifstream in("/proc/self/maps");
  std::size_t n = 0;
  for (std::string line; std::getline(in, line);) n += line.find("/memfd:shmbroker") != line.npos;
  return n;
}

std::size_t MappingRss(const void* addr) { return MappingSmapsBytes(addr, "Rss:"); }

std::size_t MappingSmapsBytes(const void* addr, std::string_view field) {
  auto a = reinterpret_cast<std::uintptr_t>(addr);
  std::ifstream in("/proc/self/smaps");
  bool inside = false;
  for (std::string line; std::getline(in, line);) {
    std::uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > 20) {
      inside = lo <= a && a < hi;
    } else if (inside && line.rfind(field, 0) == 0) {
      return std::stoull(line.substr(field.size())) * 1024;
    }
  }
  return 0;
}

std::size_t ProcessRss(pid_t pid) { return ProcessStatusBytes(pid, "VmRSS:"); }

std::size_t ProcessStatusBytes(pid_t pid, std::string_view field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field, 0) == 0) return std::stoull(line.substr(field.size())) * 1024;
  }
  return 0;
}

RawConnection::RawConnection(const std::string& socket) {
  fd_.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket.data(), socket.size());
  if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) fd_.reset();
}

int RawConnection::SendBytes(const std::string& bytes, std::vector<int> fds) {
  return wire::SendPacket(fd_.get(), std::as_bytes(std::span(bytes)), fds, false);
}

std::optional<wire::Reply> RawConnection::Receive(std::vector<UniqueFd>* fds,
                                                  std::chrono::milliseconds timeout) {
  pollfd p{fd_.get(), POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return std::nullopt;
  std::vector<std::byte> buf(wire::kMaxReplyBytes + 1);
  wire::RecvResult r = wire::RecvPacket(fd_.get(), buf, true);
  if (r.status != wire::RecvStatus::kOk) return std::nullopt;
  wire::Reply reply;
  if (!reply.ParseFromArray(buf.data(), static_cast<int>(r.size))) return std::nullopt;
  if (fds != nullptr) *fds = std::move(r.fds);
  return reply;
}

bool RawConnection::ClosedByPeer(std::chrono::milliseconds timeout) {
  pollfd p{fd_.get(), POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return false;
  std::vector<std::byte> buf(wire::kMaxReplyBytes + 1);
  wire::RecvResult r = wire::RecvPacket(fd_.get(), buf, true);
  return r.status == wire::RecvStatus::kClosed ||
         (r.status == wire::RecvStatus::kError && r.error == ECONNRESET);
}

bool RawConnection::Hello() {
  wire::Request req;
  req.mutable_hello()->set_protocol_version(wire::PROTOCOL_VERSION_CURRENT);
  req.mutable_hello()->set_client_name("raw");
  auto reply = Call(req);
  return reply && reply->code() == wire::OK;
}

std::optional<wire::Reply> RawConnection::Call(const wire::Request& request,
                                               std::vector<UniqueFd>* fds) {
  // Like a client: a daemon that refused the connection may have answered before we sent.
  if (Send(request) != 0) return Receive(fds, std::chrono::milliseconds(0));
  return Receive(fds);
}

}  // namespace shmbroker::testing
