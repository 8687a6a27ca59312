#include "common/socket_path.h"

#include <unistd.h>

#include <cstdlib>

namespace shmbroker {

std::string ResolveSocketPath(std::string_view explicit_path) {
  if (!explicit_path.empty()) return std::string(explicit_path);
  if (const char* env = std::getenv("SHMBROKER_SOCKET"); env != nullptr && *env != '\0') {
    return env;
  }
  if (::geteuid() == 0) return "/run/shmbroker/shmbroker.sock";
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
    return std::string(xdg) + "/shmbroker/shmbroker.sock";
  }
  return "/tmp/shmbroker-" + std::to_string(::geteuid()) + "/shmbroker.sock";
}

}  // namespace shmbroker
