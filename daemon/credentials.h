// Who a peer is: its uid, gid, pid and supplementary groups, as the kernel reports them for a
// connected Unix socket.
#pragma once

#include <cstdint>
#include <vector>

namespace shmbroker::daemon {

// A peer's identity, from SO_PEERCRED / SO_PEERGROUPS at connect time.
struct Credentials {
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
  std::uint32_t pid = 0;
  std::vector<std::uint32_t> groups;  // Supplementary groups, when the kernel tells.
};

// Reads SO_PEERCRED (and SO_PEERGROUPS when the kernel has it) of a connected socket.
Credentials PeerCredentials(int fd);

}  // namespace shmbroker::daemon
