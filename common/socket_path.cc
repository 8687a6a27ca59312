#include "common/socket_path.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

namespace shmbroker {
namespace {

std::string PerUserPath() {
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
    return std::string(xdg) + "/shmbroker/shmbroker.sock";
  }
  return "/tmp/shmbroker-" + std::to_string(::geteuid()) + "/shmbroker.sock";
}

const char* FromEnvironment() {
  const char* env = std::getenv("SHMBROKER_SOCKET");
  return env != nullptr && *env != '\0' ? env : nullptr;
}

}  // namespace

std::string ResolveSocketPath(std::string_view explicit_path) {
  return ResolveSocketPath(explicit_path, std::string(kSystemSocketPath));
}

std::string ResolveSocketPath(std::string_view explicit_path, const std::string& system_path) {
  if (!explicit_path.empty()) return std::string(explicit_path);
  if (const char* env = FromEnvironment()) return env;
  // The system service, when there is one, before a daemon of one's own.
  struct stat st {};
  if (::geteuid() == 0 || (::stat(system_path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode))) {
    return system_path;
  }
  return PerUserPath();
}

std::string ResolveDaemonSocketPath(std::string_view explicit_path) {
  if (!explicit_path.empty()) return std::string(explicit_path);
  if (const char* env = FromEnvironment()) return env;
  if (::geteuid() == 0) return std::string(kSystemSocketPath);
  return PerUserPath();
}

}  // namespace shmbroker
