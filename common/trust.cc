#include "common/trust.h"

#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "common/posix.h"

namespace shmbroker {

std::string UserName(uid_t uid) {
  struct passwd pw, *res = nullptr;
  char buf[4096];
  if (::getpwuid_r(uid, &pw, buf, sizeof(buf), &res) == 0 && res != nullptr) return pw.pw_name;
  return std::to_string(uid);
}

std::string DescribeUid(uid_t uid) {
  std::string name = UserName(uid);
  std::string number = std::to_string(uid);
  return name == number ? number : number + " (" + name + ")";
}

std::optional<uid_t> LookupUser(const std::string& name) {
  struct passwd pw, *res = nullptr;
  char buf[4096];
  if (::getpwnam_r(name.c_str(), &pw, buf, sizeof(buf), &res) == 0 && res != nullptr) {
    return pw.pw_uid;
  }
  return std::nullopt;
}

std::optional<uid_t> ParseUser(const std::string& user) {
  if (user.empty()) return std::nullopt;
  if (std::optional<uid_t> uid = LookupUser(user)) return uid;
  std::optional<std::uint64_t> n = ParseUint(user);
  // (uid_t)-1 means "no change" to chown and is nobody's uid.
  if (!n || *n >= static_cast<uid_t>(-1)) return std::nullopt;
  return static_cast<uid_t>(*n);
}

std::string ModeText(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

Status CheckPrivateDirectory(const struct stat& st, const std::string& path, uid_t owner) {
  std::string who = owner == 0 ? "root" : "uid " + DescribeUid(owner) + " or root";
  if (!S_ISDIR(st.st_mode)) {
    return Status::FailedPrecondition("'" + path + "' is not a directory");
  }
  // In a sticky directory (/tmp) others may add names but not remove or replace ours.
  bool others_write = (st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0;
  if ((st.st_uid != owner && st.st_uid != 0) || others_write) {
    return Status::FailedPrecondition(
        "the socket directory '" + path + "' is owned by uid " + DescribeUid(st.st_uid) +
        " with mode " + ModeText(st.st_mode) + "; it must be owned by " + who +
        " and writable by no one else (or sticky, as /tmp is), or another user could replace the "
        "socket. Remove it (a "
        "new one is created), fix its owner and mode, or choose another path with --socket");
  }
  return Status::Ok();
}

Result<std::optional<uid_t>> TrustedUid(std::optional<uid_t> explicit_uid) {
  if (explicit_uid) return explicit_uid;
  const char* env = std::getenv("SHMBROKER_TRUST_UID");
  if (env == nullptr || *env == '\0') return std::optional<uid_t>();
  std::optional<uid_t> uid = ParseUser(env);
  if (!uid) {
    return Status::InvalidArgument(std::string("SHMBROKER_TRUST_UID='") + env +
                                   "' is neither a uid nor a user name");
  }
  return uid;
}

Status CheckDaemonTrusted(int fd, const std::string& path, std::optional<uid_t> trusted_uid) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return PosixError("reading the daemon's credentials at '" + path + "'", errno);
  }
  if (cred.uid == 0 || cred.uid == ::geteuid() || (trusted_uid && cred.uid == *trusted_uid)) {
    return Status::Ok();
  }
  // A socket in a directory only root may write to was put there by root (systemd's socket unit
  // for a DynamicUser= service). The check follows symlinks above the socket, as connect() did.
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == 0 &&
      (st.st_mode & (S_IWGRP | S_IWOTH)) == 0) {
    return Status::Ok();
  }
  return Status::Unavailable(
      "refusing the daemon at '" + path + "': it runs as uid " + DescribeUid(cred.uid) +
      " (not root, not you) and its socket directory is not root's alone, so anyone could have "
      "started it. If you trust that user, set SHMBROKER_TRUST_UID=" +
      std::to_string(cred.uid));
}

}  // namespace shmbroker
