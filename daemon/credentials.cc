#include "credentials.h"

#include <sys/socket.h>

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
  gid_t groups[64];
  len = sizeof(groups);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0) {
    creds.groups.assign(groups, groups + len / sizeof(gid_t));
  }
#endif
  return creds;
}

}  // namespace shmbroker::daemon
