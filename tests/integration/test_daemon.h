// The real shmbrokerd binary on a temporary socket, for integration tests; plus helpers to run
// code in a child process.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <shmbroker/client.h>
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shmbroker.pb.h"
#include "wire.h"

namespace shmbroker::testing {

struct DaemonOptions {
  // Arguments after the fixture's own "--socket DIR/s.sock --log-level warn".
  std::vector<std::string> args;
  // Pass only `args` (the test chooses the socket, or expects a usage error).
  bool only_args = false;
  std::vector<std::string> env;    // "NAME=value", added to the daemon's environment.
  rlim_t nofile_soft = 0;          // The daemon's soft RLIMIT_NOFILE; 0: this process's.
  rlim_t nofile_hard = 0;          // And its hard one (the daemon raises soft to hard); 0: same.
  bool wait_until_serving = true;  // Wait until it accepts on socket(); fail the test if not.
  // Run it as this uid (and gid); its directory is then that user's. -1: as this process.
  int uid = -1;
  // A listening socket it inherits as socket activation passes one ($LISTEN_FDS), or -1.
  int listen_fd = -1;
  // Its stdout and stderr instead of log() (e.g. a pipe nobody drains), or -1.
  int output_fd = -1;
};

// The real shmbrokerd in a temporary directory. Its stdout and stderr go to log().
class TestDaemon {
 public:
  explicit TestDaemon(DaemonOptions options = {});
  explicit TestDaemon(std::vector<std::string> extra_args)
      : TestDaemon(DaemonOptions{.args = std::move(extra_args)}) {}
  // If it still runs: SIGTERM, and the test fails unless it exits 0 (a crash or a sanitizer
  // report fails it too).
  ~TestDaemon();
  TestDaemon(const TestDaemon&) = delete;
  TestDaemon& operator=(const TestDaemon&) = delete;

  const std::string& socket() const { return socket_; }
  const std::string& dir() const { return dir_; }
  pid_t pid() const { return pid_; }
  bool alive();
  std::string log() const;

  // Waits for the daemon to exit and returns its status (128 + signal if killed). Still running
  // after `limit`: it is killed and -1 returned, so that a test expecting an exit fails instead
  // of hanging.
  int Wait(std::chrono::milliseconds limit = std::chrono::seconds(10));
  // SIGTERM, then Wait().
  int Terminate();

  Result<Client> Connect(std::string name = "test") const;
  // Connect() that must succeed.
  Client MustConnect(std::string name = "test") const;
  // Connects to `path` (another socket than socket()), retrying until `limit`.
  Result<Client> ConnectWithin(const std::string& path,
                               std::chrono::milliseconds limit = std::chrono::seconds(5));

 private:
  std::string dir_, socket_, log_path_;
  int uid_ = -1;
  pid_t pid_ = -1;
  std::optional<int> exit_status_;  // Once reaped.
};

// A child process that sets something up and then holds it until it is killed: "a client holds
// a segment, then dies by SIGKILL". `hold(ready)` runs in the child; it calls `ready()` once
// everything is in place (which tells the parent and never returns), or returns an exit code
// if something failed.
class HoldingChild {
 public:
  explicit HoldingChild(const std::function<int(const std::function<void()>& ready)>& hold,
                        int uid = -1);
  // Kills the child if it still runs.
  ~HoldingChild();
  HoldingChild(const HoldingChild&) = delete;
  HoldingChild& operator=(const HoldingChild&) = delete;

  // Whether the child reached ready() (within 10 s).
  bool ready() const { return ready_; }
  pid_t pid() const { return pid_; }
  // SIGKILL, and reap it. True if it died of that signal.
  bool Kill();

 private:
  pid_t pid_ = -1;
  bool ready_ = false;
};

// Runs `fn` in a forked child (optionally after dropping to `uid`) and returns its exit code
// (128 + signal if it was killed). `fn` returns the child's exit code.
int RunInChild(const std::function<int()>& fn, int uid = -1);

// Drops this (child) process to `uid`/`gid`, with no supplementary groups.
bool DropTo(int uid, int gid);

// A socket path in /tmp of this test process's own ("/tmp/<stem>-<pid>.sock"), for tests that
// give the daemon --socket themselves: a fixed path would collide with another test run (another
// checkout, CI) on the same machine.
std::string ScratchSocket(std::string_view stem);

// Polls `pred` until it holds or `timeout` passes.
bool Eventually(const std::function<bool()>& pred,
                std::chrono::milliseconds timeout = std::chrono::seconds(10));

// This process's (or process `pid`'s) open fds, and this process's mappings of shmbroker memory
// (memfds the daemon made; other mappings come and go with malloc and are not counted).
std::size_t OpenFdCount(pid_t pid = 0);
std::size_t SegmentMappingCount();
// Bytes of the mapping containing `addr` that have page-table entries here (its smaps Rss).
std::size_t MappingRss(const void* addr);
// The same for any of its smaps fields given in kB, e.g. "ShmemPmdMapped:" (2 MiB mappings).
std::size_t MappingSmapsBytes(const void* addr, std::string_view field);
// Resident memory of process `pid` (VmRSS), in bytes.
std::size_t ProcessRss(pid_t pid);
// Any field of /proc/PID/status given in kB, in bytes, e.g. "RssAnon:" (0 if missing).
std::size_t ProcessStatusBytes(pid_t pid, std::string_view field);

constexpr int kNobody = 65534;

// The wire protocol by hand, for what the client library never sends.
class RawConnection {
 public:
  explicit RawConnection(const std::string& socket);
  bool ok() const { return static_cast<bool>(fd_); }
  int fd() const { return fd_.get(); }

  // Sends raw bytes (and fds) as one packet; returns the errno or 0.
  int SendBytes(const std::string& bytes, std::vector<int> fds = {});
  int Send(const wire::Request& request) { return SendBytes(request.SerializeAsString()); }
  // Receives one reply (blocking, bounded by `timeout`). nullopt on EOF, error or timeout.
  std::optional<wire::Reply> Receive(std::vector<UniqueFd>* fds = nullptr,
                                     std::chrono::milliseconds timeout = std::chrono::seconds(5));
  // True when the daemon has closed the connection (EOF within `timeout`).
  bool ClosedByPeer(std::chrono::milliseconds timeout = std::chrono::seconds(5));

  // hello; true on OK.
  bool Hello();
  std::optional<wire::Reply> Call(const wire::Request& request,
                                  std::vector<UniqueFd>* fds = nullptr);

 private:
  UniqueFd fd_;
};

}  // namespace shmbroker::testing
