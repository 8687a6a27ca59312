// Who may have put a socket where it is. The daemon refuses to bind in a directory another user
// could change; a client refuses a daemon that another user runs, unless only root could have put
// its socket there. Internal; not installed.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

#include "shmbroker/status.h"

namespace shmbroker {

// "65534 (nobody)", or the bare number when the user database has no name for it.
std::string DescribeUid(uid_t uid);
// The user's name, or the uid as text when the user database has none.
std::string UserName(uid_t uid);
// The uid of the user named `name` in the user database (names only); nullopt when none.
std::optional<uid_t> LookupUser(const std::string& name);
// A user name or a decimal uid; nullopt when neither.
std::optional<uid_t> ParseUser(const std::string& user);

// "0755".
std::string ModeText(mode_t mode);

// OK when the directory `st` describes (named `path` in messages) is one that only `owner` or root
// can change: a real directory, owned by `owner` or root, writable by neither group nor others
// unless sticky (as /tmp is: others may add names there, but not remove or replace ours).
// FAILED_PRECONDITION otherwise, naming the path, its owner and mode, and what to do.
Status CheckPrivateDirectory(const struct stat& st, const std::string& path, uid_t owner);

// The uid a client trusts besides root and itself: `explicit_uid` when set, else
// $SHMBROKER_TRUST_UID (a uid or user name), else none. INVALID_ARGUMENT when the variable holds
// neither.
Result<std::optional<uid_t>> TrustedUid(std::optional<uid_t> explicit_uid);

// For a client connected through `fd` to the daemon at `path`: OK when that daemon runs as root,
// as this process's euid or as `trusted_uid`, or when the socket's directory belongs to root and
// nobody else may write to it (so only root can have put the socket there, as systemd's socket
// unit does for a DynamicUser service). UNAVAILABLE otherwise, naming the path and the uid found.
Status CheckDaemonTrusted(int fd, const std::string& path, std::optional<uid_t> trusted_uid);

}  // namespace shmbroker
