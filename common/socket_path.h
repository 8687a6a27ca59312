// Where the daemon listens and clients connect. Internal; the public spelling of the clients' rule
// is shmbroker::ResolveSocketPath in client.h, and the Python client follows the same rule.
#pragma once

#include <string>
#include <string_view>

namespace shmbroker {

// The system service's socket (shmbroker.socket).
inline constexpr std::string_view kSystemSocketPath = "/run/shmbroker/shmbroker.sock";

// For clients: `explicit_path` if not empty, else $SHMBROKER_SOCKET, else the system service's
// socket (/run/shmbroker/shmbroker.sock) for root or when it exists, else
// $XDG_RUNTIME_DIR/shmbroker/shmbroker.sock, else /tmp/shmbroker-$UID/shmbroker.sock.
std::string ResolveSocketPath(std::string_view explicit_path);
// The same with another system path (for tests).
std::string ResolveSocketPath(std::string_view explicit_path, const std::string& system_path);

// For the daemon: the same, except that a daemon not running as root never takes the system
// service's path (only root can create it).
std::string ResolveDaemonSocketPath(std::string_view explicit_path);

}  // namespace shmbroker
