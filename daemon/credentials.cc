#include "credentials.h"

#include <sys/socket.h>

#include <cerrno>
#include <vector>

namespace shmbroker::daemon {

Credentials PeerCredentials(int fd) {
  Credentials creds;
  struct ucred uc {};
  socklen_t len = sizeof(uc);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) == 0) {
    creds.uid = uc.uid;
    creds.gid = uc.gid;
    creds.pid = static_cast<std::uint32_t>(uc.pid);
  } else {
    // Without credentials the peer gets the least privilege.
    creds.uid = creds.gid = 65534;
  }
#ifdef SO_PEERGROUPS
  // Most peers have a few groups; one from a directory service may have hundreds. ERANGE says how
  // many bytes the kernel needs: retry with that (up to NGROUPS_MAX, 65536 groups).
  std::vector<gid_t> groups(64);
  for (int attempt = 0; attempt < 3; ++attempt) {
    len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
      groups.resize(len / sizeof(gid_t));
      creds.groups.assign(groups.begin(), groups.end());
      break;
    }
    if (errno != ERANGE || len <= groups.size() * sizeof(gid_t)) break;
    groups.resize(len / sizeof(gid_t));
  }
#endif
  return creds;
}

}  // namespace shmbroker::daemon
