// Where the daemon listens and clients connect, resolved the same way by every shmbroker program.
// Internal; the public spelling is shmbroker::ResolveSocketPath in client.h.
#pragma once

#include <string>
#include <string_view>

namespace shmbroker {

// `explicit_path` if not empty, else $SHMBROKER_SOCKET, else /run/shmbroker/shmbroker.sock for
// root, else $XDG_RUNTIME_DIR/shmbroker/shmbroker.sock, else /tmp/shmbroker-$UID/shmbroker.sock.
std::string ResolveSocketPath(std::string_view explicit_path);

}  // namespace shmbroker
