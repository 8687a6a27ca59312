// shmctl: see and clean up what shmbrokerd holds. This file is only the command line: the
// subcommands are in commands.cc, what they print in render.cc.
//
// Exit codes: 0 success, 1 an operation failed, 2 usage error, 3 the daemon could not be reached.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "commands.h"
#include "shmbroker/version.h"

namespace {

int UsageError(const std::string& message) {
  std::fprintf(stderr, "shmctl: %s\nRun 'shmctl --help' for usage.\n", message.c_str());
  return shmbroker::shmctl::kUsage;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace shmbroker::shmctl;
  CLI::App app{"shmctl: inspect and clean up the segments shmbrokerd holds"};
  // Global options may also follow the subcommand (`shmctl list --socket S`): a subcommand hands
  // what it does not know to its parent. Extras are collected and reported below, by name.
  app.fallthrough();
  app.allow_extras();
  GlobalOptions global;
  app.add_option("--socket", global.socket,
                 "Daemon socket (default: $SHMBROKER_SOCKET, else the standard path)")
      ->check(CLI::Validator(
          [](std::string& path) {
            return path.empty() ? std::string("the socket path must not be empty") : "";
          },
          "PATH"));
  app.set_version_flag("--version", std::string("shmctl ") + SHMBROKER_VERSION);

  std::vector<std::string> patterns, names;
  bool json = false, long_format = false, names_only = false, unlinked = false, prometheus = false;
  std::string info_name, owner, older_than;
  shmbroker::PurgeOptions purge;

  auto* list = app.add_subcommand("list", "One row per segment, sorted by name");
  list->add_option("PATTERN", patterns, "Shell-style globs (job7/*); all segments if none");
  list->add_flag("--json", json, "One JSON document (see README)");
  list->add_flag("--long,-l", long_format, "Add creator pid, creation time and attributes");
  list->add_flag("--quiet,-q", names_only, "Only the names, one per line");
  list->add_flag("--unlinked", unlinked,
                 "Unlinked segments still in use (attached or mapped) and who holds them");

  auto* info = app.add_subcommand(
      "info", "Everything the daemon knows about one segment, and which processes hold it");
  info->add_option("NAME", info_name, "Segment name")->required();
  info->add_flag("--json", json, "One JSON document (see README)");

  auto* unlink = app.add_subcommand("unlink", "Unlink segments by name");
  unlink->add_option("NAME", names, "Segment names")->required();

  auto* purge_cmd = app.add_subcommand(
      "purge", "Unlink every segment matching ALL the selectors given (at least one)");
  purge_cmd->add_option("PATTERN", purge.patterns, "Shell-style globs; a name matching any counts");
  purge_cmd->add_flag("--orphans", purge.orphans,
                      "No live attachments and the connection that created it has closed");
  purge_cmd->add_option("--older-than", older_than,
                        "Created at least this long ago: 90s, 10m, 2h, 7d");
  purge_cmd->add_option("--owner", owner, "Owned by this user (name or uid)");
  purge_cmd->add_flag("--unattached", purge.unattached, "No live attachments");
  purge_cmd->add_flag("--all", purge.all, "Every segment (yours only, unless you are root)");
  purge_cmd->add_flag("--dry-run,-n", purge.dry_run, "Only print what would be removed");
  purge_cmd->add_flag("--json", json, "One JSON document (see README)");

  auto* trim = app.add_subcommand(
      "trim",
      "Give the daemon's warm pool back to the kernel (root: all of it; others: what "
      "it keeps for their own segments)");
  trim->add_flag("--json", json, "One JSON document (see README)");

  auto* stats = app.add_subcommand("stats", "Daemon version, uptime, memory, clients, counters");
  stats->add_flag("--json", json, "One JSON document (see README)");
  stats->add_flag("--prometheus", prometheus,
                  "Prometheus text format, for node_exporter's textfile collector");

  // CLI11 would take the next argument as the value of a bare "--socket=".
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--socket=") return UsageError("--socket: the path is empty");
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);  // Prints help, version or the error.
    return rc == 0 ? kOk : kUsage;
  }
  std::vector<std::string> extra = app.remaining();
  CLI::App* command = app.get_subcommands().empty() ? nullptr : app.get_subcommands().front();
  if (!extra.empty()) {
    const std::string& first = extra.front();
    if (first.rfind("-", 0) == 0) {
      return UsageError("unknown option '" + first + "'" +
                        (command ? " for '" + command->get_name() + "'" : std::string()));
    }
    if (command == nullptr) {
      return UsageError("unknown command '" + first +
                        "' (commands: list, info, unlink, purge, trim, stats)");
    }
    return UsageError("unexpected argument '" + first + "' for '" + command->get_name() + "'");
  }
  if (command == nullptr) {
    return UsageError("a command is required: list, info, unlink, purge, trim or stats");
  }
  if (list->parsed() && unlinked) return UnlinkedCommand(global, patterns, json);
  if (list->parsed()) return ListCommand(global, patterns, json, long_format, names_only);
  if (info->parsed()) return InfoCommand(global, info_name, json);
  if (unlink->parsed()) return UnlinkCommand(global, names);
  if (purge_cmd->parsed()) return PurgeCommand(global, purge, owner, older_than, json);
  if (trim->parsed()) return TrimCommand(global, json);
  if (stats->parsed() && json && prometheus) {
    return UsageError("--json and --prometheus cannot be used together: choose one format");
  }
  if (stats->parsed()) return StatsCommand(global, json, prometheus);
  return kUsage;
}
