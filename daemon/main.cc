// shmbrokerd: owns named shared-memory segments and hands them to clients over a Unix socket.
// This file is the command line, logging and the file limit; the daemon itself is server.h.
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "common/socket_path.h"
#include "common/units.h"
#include "server.h"
#include "shmbroker/version.h"
#include "systemd.h"
#include "validate.h"
#include "wire.h"

namespace {

constexpr const char* kDefaultConfig = "/etc/shmbroker/shmbrokerd.conf";

// The daemon holds one or two fds per segment: take all the hard limit allows.
void RaiseFileLimit() {
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  rlim_t old = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &rl) == 0) {
    spdlog::debug("raised RLIMIT_NOFILE from {} to {}", old, rl.rlim_cur);
  } else {
    spdlog::warn("cannot raise RLIMIT_NOFILE from {}: {}", old, std::strerror(errno));
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace shmbroker;
  // Before anything opens a descriptor (the config file, the notify socket, the logger): fds
  // from 3 on may be ours to adopt, and a hole in that range must stay a hole.
  std::vector<daemon::ListenFd> inherited = daemon::TakeListenFds();
  CLI::App app{"shmbrokerd: a shared-memory broker for NumPy arrays and raw segments"};
  std::string socket;
  std::string log_level = "info";
  std::string max_memory_text = "0";
  app.add_option("--socket", socket,
                 "Socket path (default: $SHMBROKER_SOCKET, else /run/shmbroker/shmbroker.sock "
                 "as root, else $XDG_RUNTIME_DIR/shmbroker/shmbroker.sock, else "
                 "/tmp/shmbroker-$UID/shmbroker.sock)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();
  app.add_option("--max-memory", max_memory_text,
                 "Cap on the bytes all segments may hold: bytes, or 512M, 8G, 1T; 0 = no cap "
                 "beyond the machine's")
      ->capture_default_str();
  // Read when present and no --config is given: where a packaged service keeps its settings.
  const char* env_config = std::getenv("SHMBROKERD_CONFIG");
  std::string default_config = env_config != nullptr ? env_config : kDefaultConfig;
  app.set_config("--config", default_config,
                 "Read options from a TOML/INI file (keys as the long options, e.g. "
                 "max-memory = \"8G\"). Default: $SHMBROKERD_CONFIG, else " +
                     std::string(kDefaultConfig) + ", when the file exists");
  // A misspelt key would otherwise start a daemon without the setting, silently.
  app.allow_config_extras(CLI::config_extras_mode::error);
  app.set_version_flag("--version", std::string("shmbrokerd ") + SHMBROKER_VERSION);
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help, --version
  } catch (const CLI::ConfigError& e) {
    // CLI11 says "INI was not able to parse KEY": say which file and what it may hold.
    std::fprintf(stderr,
                 "shmbrokerd: %s: %s (unknown key? the file takes the long options without "
                 "dashes: socket, log-level, max-memory)\n",
                 app.get_option("--config")->as<std::string>().c_str(), e.what());
    return 2;
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // Prints the error.
    return 2;     // Every usage error, whatever CLI11's own code for it.
  }

  auto max_memory = ParseSize(max_memory_text);
  if (!max_memory.ok()) {
    std::fprintf(stderr, "shmbrokerd: --max-memory: %s\n", max_memory.status().message().c_str());
    return 2;
  }

  auto logger = spdlog::stderr_color_mt("shmbrokerd");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  ::signal(SIGPIPE, SIG_IGN);
  RaiseFileLimit();

  try {
    asio::io_context io(1);
    daemon::Server server(io, {.socket_path = ResolveSocketPath(socket),
                               .max_memory = *max_memory,
                               .version = SHMBROKER_VERSION,
                               .notifier = daemon::Notifier::FromEnvironment(),
                               .inherited = std::move(inherited)});
    if (Status s = server.Start(); !s.ok()) {
      spdlog::critical("cannot start: {}", s.message());
      return 1;
    }
    if (const CLI::Option* config = app.get_option("--config"); config->count() > 0) {
      spdlog::info("configuration read from {}", config->as<std::string>());
    }
    spdlog::info("shmbrokerd {} listening on {} (max memory: {})", SHMBROKER_VERSION,
                 server.socket_path(),
                 *max_memory == 0 ? std::string("no cap") : HumanBytes(*max_memory));
    io.run();
  } catch (const std::exception& e) {
    spdlog::critical("fatal: {}", e.what());
    return 1;
  }
  return 0;
}
