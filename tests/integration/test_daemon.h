// The real shmbrokerd binary on a temporary socket, for integration tests; plus helpers to run
// code in a child process.
#pragma once

#include <sys/types.h>

#include <shmbroker/client.h>
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "shmbroker.pb.h"
#include "wire.h"

namespace shmbroker::testing {

class TestDaemon {
 public:
  // Starts shmbrokerd (its stderr to a log file) and waits until it accepts connections.
  explicit TestDaemon(std::vector<std::string> extra_args = {});
  // SIGTERM, then checks the daemon exited 0 (a crash or a sanitizer report fails the test).
  ~TestDaemon();
  TestDaemon(const TestDaemon&) = delete;
  TestDaemon& operator=(const TestDaemon&) = delete;

  const std::string& socket() const { return socket_; }
  const std::string& dir() const { return dir_; }
  pid_t pid() const { return pid_; }
  bool alive() const;
  std::string log() const;

  Result<Client> Connect(std::string name = "test") const;
  // Connect() that must succeed.
  Client MustConnect(std::string name = "test") const;

 private:
  std::string dir_, socket_, log_path_;
  pid_t pid_ = -1;
};

// Runs `fn` in a forked child (optionally after dropping to `uid`) and returns its exit code
// (128 + signal if it was killed). `fn` returns the child's exit code.
int RunInChild(const std::function<int()>& fn, int uid = -1);

// Drops this (child) process to `uid`/`gid`, with no supplementary groups.
bool DropTo(int uid, int gid);

// Polls `pred` until it holds or `timeout` passes.
bool Eventually(const std::function<bool()>& pred,
                std::chrono::milliseconds timeout = std::chrono::seconds(10));

// This process's open fds, and its mappings of shmbroker memory (memfds the daemon made; other
// mappings come and go with malloc and are not counted).
std::size_t OpenFdCount();
std::size_t SegmentMappingCount();
// Bytes of the mapping containing `addr` that have page-table entries here (its smaps Rss).
std::size_t MappingRss(const void* addr);

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
