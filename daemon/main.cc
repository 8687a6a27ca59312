// shmbrokerd: owns named shared-memory segments and hands them to clients over a Unix socket.
// This file is the command line, logging and the file limit; the daemon itself is server.h.
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include <spdlog/async.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "common/posix.h"
#include "common/socket_path.h"
#include "common/units.h"
#include "memfd.h"
#include "pool.h"
#include "resource_limits.h"
#include "server.h"
#include "shmbroker/version.h"
#include "systemd.h"

namespace {

using namespace shmbroker;

constexpr const char* kDefaultConfig = "/etc/shmbroker/shmbrokerd.conf";
// Log lines queued for the writer thread; past that the oldest are dropped (and counted), so that
// a stalled stderr (a journal that stopped reading) never blocks the event loop.
constexpr std::size_t kLogQueue = 8192;

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

void StartLogging(const std::string& level) {
  spdlog::init_thread_pool(kLogQueue, 1);
  auto logger = spdlog::create_async_nb<spdlog::sinks::stderr_color_sink_mt>("shmbrokerd");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
}

// A size option ("8G"); `what` names it in the error.
bool ReadSize(const std::string& text, const char* what, std::uint64_t& out) {
  auto v = ParseSize(text);
  if (!v.ok()) {
    std::fprintf(stderr, "shmbrokerd: %s: %s\n", what, v.status().message().c_str());
    return false;
  }
  out = *v;
  return true;
}

// A positive duration: milliseconds ("500ms", for tests and impatient operators) or the usual
// units ("10s", "1m").
bool ReadTimeout(const std::string& text, const char* what, std::chrono::milliseconds& out) {
  if (text.size() > 2 && text.ends_with("ms")) {
    auto ms = ParseUint(std::string_view(text).substr(0, text.size() - 2));
    if (ms && *ms > 0) {
      out = std::chrono::milliseconds(*ms);
      return true;
    }
  } else if (auto d = ParseDuration(text); d && d->count() > 0) {
    out = *d;
    return true;
  }
  std::fprintf(stderr, "shmbrokerd: %s: '%s' is not a duration like 500ms, 10s, 1m\n", what,
               text.c_str());
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  // Before anything opens a descriptor (the config file, the notify socket, the logger): fds
  // from 3 on may be ours to adopt, and a hole in that range must stay a hole.
  std::vector<daemon::ListenFd> inherited = daemon::TakeListenFds();
  CLI::App app{"shmbrokerd: a shared-memory broker for NumPy arrays and raw segments"};
  daemon::Limits limits;
  std::string socket;
  std::string log_level = "info";
  std::string max_memory_text = "0";
  std::string max_memory_per_user_text = "half";
  std::string handshake_text = "10s";
  std::string in_flight_text = "60s";
  std::string shared_max_text = "1M";
  std::string huge_pages_text = "auto";
  std::string warm_pool_text = "0";
  std::string prealloc_text = "0";
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
  app.add_option("--max-memory-per-user", max_memory_per_user_text,
                 "Cap on the bytes one user's segments may hold (root is exempt): a size, 0 = no "
                 "cap, or 'half' (the default): half of the machine's memory");
  app.add_option("--max-segments-per-user", limits.max_segments_per_user,
                 "Cap on one user's segments (root is exempt); 0 = no cap")
      ->capture_default_str();
  app.add_option("--max-connections", limits.max_connections,
                 "Clients at once, all users together (root is exempt); default: a quarter of "
                 "the file limit, at most 4096");
  app.add_option("--max-connections-per-user", limits.max_connections_per_user,
                 "Clients of one user at once (root is exempt)")
      ->capture_default_str();
  app.add_option("--max-attachments-per-connection", limits.max_attachments_per_connection,
                 "Attachments one connection may hold")
      ->capture_default_str();
  app.add_option("--fd-store-max", limits.fd_store_max,
                 "Entries the service manager's fd store keeps (FileDescriptorStoreMax of the "
                 "unit): creates that would not fit are refused, one user gets a quarter")
      ->capture_default_str();
  app.add_option("--handshake-timeout", handshake_text,
                 "How long a new connection may take to say hello: 500ms, 10s, 1m")
      ->capture_default_str();
  app.add_option("--in-flight-timeout", in_flight_text,
                 "How long an array in flight to another process (pickled) holds its segment "
                 "when nobody attaches it: 500ms, 10s, 1m")
      ->capture_default_str();
  app.add_option("--shared-max", shared_max_text,
                 "Segments up to this size (at most 64M) are blocks of regions shared by one "
                 "owner's segments of the same group and mode: one round trip to create or "
                 "attach, no descriptor, no mmap; 0 = every segment has its own memfd")
      ->capture_default_str();
  app.add_option("--huge-pages", huge_pages_text,
                 "auto: back segments of 2 MiB and more (with regions of their own) by 2 MiB pages "
                 "where the kernel can (MADV_COLLAPSE, Linux 6.1+), else quietly 4 KiB pages; "
                 "never: 4 KiB pages only")
      ->check(CLI::IsMember({"auto", "never"}))
      ->capture_default_str();
  app.add_option("--warm-pool", warm_pool_text,
                 "Keep up to this much memory of released large segments (zeroed) for later "
                 "creates of the same owner, group, mode and size: a size, 0 = no pool")
      ->capture_default_str();
  app.add_option("--prealloc", prealloc_text,
                 "Fill the warm pool with this much fresh memory at start, for the first create "
                 "of up to that size by anyone (implies --warm-pool of at least as much)")
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
                 "dashes, e.g. max-memory = \"8G\"; see --help)\n",
                 app.get_option("--config")->as<std::string>().c_str(), e.what());
    return 2;
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // Prints the error.
    return 2;     // Every usage error, whatever CLI11's own code for it.
  }

  if (!ReadSize(max_memory_text, "--max-memory", limits.max_memory)) return 2;
  if (max_memory_per_user_text == "half") {
    limits.max_memory_per_user = daemon::PhysicalMemory() / 2;
  } else if (!ReadSize(max_memory_per_user_text, "--max-memory-per-user",
                       limits.max_memory_per_user)) {
    return 2;
  }
  if (!ReadTimeout(handshake_text, "--handshake-timeout", limits.handshake_timeout)) return 2;
  if (!ReadTimeout(in_flight_text, "--in-flight-timeout", limits.in_flight_timeout)) return 2;
  if (limits.max_attachments_per_connection == 0 || limits.max_connections_per_user == 0) {
    std::fprintf(stderr,
                 "shmbrokerd: --max-attachments-per-connection and --max-connections-per-user "
                 "must be at least 1\n");
    return 2;
  }

  std::uint64_t shared_max = 0;
  if (!ReadSize(shared_max_text, "--shared-max", shared_max)) return 2;
  if (shared_max > daemon::ArenaOptions{}.region_bytes) {
    std::fprintf(stderr, "shmbrokerd: --shared-max is at most %s (a shared region's size)\n",
                 HumanBytes(daemon::ArenaOptions{}.region_bytes).c_str());
    return 2;
  }

  std::uint64_t warm_pool = 0, prealloc = 0;
  if (!ReadSize(warm_pool_text, "--warm-pool", warm_pool)) return 2;
  if (!ReadSize(prealloc_text, "--prealloc", prealloc)) return 2;
  if (limits.max_memory != 0 && std::max(warm_pool, prealloc) > limits.max_memory) {
    std::fprintf(stderr,
                 "shmbrokerd: --warm-pool and --prealloc must be at most --max-memory (%s)\n",
                 HumanBytes(limits.max_memory).c_str());
    return 2;
  }
  if (prealloc != 0 && prealloc < daemon::WarmPool::kMinBytes) {
    std::fprintf(stderr, "shmbrokerd: --prealloc must be 0 or at least %s\n",
                 HumanBytes(daemon::WarmPool::kMinBytes).c_str());
    return 2;
  }

  StartLogging(log_level);
  ::signal(SIGPIPE, SIG_IGN);
  RaiseFileLimit();

  int rc = 0;
  try {
    asio::io_context io(1);
    daemon::Server server(io, {.socket_path = ResolveDaemonSocketPath(socket),
                               .limits = limits,
                               .version = SHMBROKER_VERSION,
                               .notifier = daemon::Notifier::FromEnvironment(),
                               .inherited = std::move(inherited),
                               .shared_max_bytes = shared_max,
                               .huge_pages = *daemon::ParseHugePages(huge_pages_text),
                               .warm_pool = warm_pool,
                               .prealloc = prealloc});
    if (Status s = server.Start(); !s.ok()) {
      spdlog::critical("cannot start: {}", s.message());
      rc = 1;
    } else {
      if (const CLI::Option* config = app.get_option("--config"); config->count() > 0) {
        spdlog::info("configuration read from {}", config->as<std::string>());
      }
      spdlog::info("shmbrokerd {} listening on {} (max memory: {}, per user: {}, warm pool: {})",
                   SHMBROKER_VERSION, server.socket_path(),
                   limits.max_memory == 0 ? std::string("no cap") : HumanBytes(limits.max_memory),
                   limits.max_memory_per_user == 0 ? std::string("no cap")
                                                   : HumanBytes(limits.max_memory_per_user),
                   std::max(warm_pool, prealloc) == 0 ? std::string("none")
                                                      : HumanBytes(std::max(warm_pool, prealloc)));
      io.run();
    }
  } catch (const std::exception& e) {
    spdlog::critical("fatal: {}", e.what());
    rc = 1;
  }
  spdlog::shutdown();  // Writes out what is queued.
  return rc;
}
