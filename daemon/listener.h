// The daemon's listening socket: bound to a path (with stale-socket recovery) or inherited from
// the service manager, and the socket file removed at the end only if it is still the one this
// daemon bound.
#pragma once

#include <sys/types.h>

#include <string>

#include "common/unique_fd.h"
#include "shmbroker/status.h"

namespace shmbroker::daemon {

class Listener {
 public:
  // Binds a SOCK_SEQPACKET socket at `path` (mode 0666) and listens. The directory is created if
  // missing (0755 for a root daemon or under /run, else 0700) and must be a real directory that
  // only this user or root can write to. Refuses (FAILED_PRECONDITION) when a live daemon answers
  // there, the path is not a socket, or the directory is not safe; removes a stale socket file
  // only if this uid owns it.
  static Result<Listener> Bind(const std::string& path);
  // Adopts an inherited listening socket (socket activation) and learns its path from it.
  static Result<Listener> Adopt(UniqueFd fd);

  Listener(Listener&&) noexcept;
  Listener& operator=(Listener&&) noexcept;
  // Removes the socket file if this listener bound it and it is still ours (a successor may have
  // replaced it).
  ~Listener();

  // The listening descriptor, handed over once (to the acceptor).
  UniqueFd TakeFd() { return std::move(fd_); }
  const std::string& path() const { return path_; }
  bool bound() const { return bound_; }

 private:
  Listener() = default;
  void RemoveFile();

  UniqueFd fd_;
  UniqueFd dir_;  // The socket's directory, checked once; every later step goes through it.
  std::string path_;
  std::string name_;    // The socket's name in dir_.
  bool bound_ = false;  // We created the file (not inherited).
  ino_t inode_ = 0;
};

// Whether a daemon accepts connections on `path` now.
bool DaemonAnswers(const std::string& path);

}  // namespace shmbroker::daemon
