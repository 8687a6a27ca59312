// shmctl: see and clean up what shmbrokerd holds. This file is only the command line: the
// subcommands are in commands.cc, what they print in render.cc.
//
// Exit codes: 0 success, 1 an operation failed, 2 usage error, 3 the daemon could not be reached.
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "shmbroker/version.h"

int main(int argc, char** argv) {
  using namespace shmbroker::shmctl;
  CLI::App app{"shmctl: inspect and clean up the segments shmbrokerd holds"};
  app.require_subcommand(1);
  GlobalOptions global;
  app.add_option("--socket", global.socket,
                 "Daemon socket (default: $SHMBROKER_SOCKET, else the standard path)");
  app.set_version_flag("--version", std::string("shmctl ") + SHMBROKER_VERSION);

  std::vector<std::string> patterns, names;
  bool json = false, long_format = false;
  std::string info_name, owner, older_than;
  shmbroker::PurgeOptions purge;

  auto* list = app.add_subcommand("list", "One row per segment, sorted by name");
  list->add_option("PATTERN", patterns, "Shell-style globs (job7/*); all segments if none");
  list->add_flag("--json", json, "One JSON document (see README)");
  list->add_flag("--long,-l", long_format, "Add creator pid, creation time and attributes");

  auto* info = app.add_subcommand("info", "Everything the daemon knows about one segment");
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

  auto* stats = app.add_subcommand("stats", "Daemon version, uptime, memory, clients, counters");
  stats->add_flag("--json", json, "One JSON document (see README)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);  // Prints help, version or the error.
    return rc == 0 ? kOk : kUsage;
  }
  if (list->parsed()) return ListCommand(global, patterns, json, long_format);
  if (info->parsed()) return InfoCommand(global, info_name, json);
  if (unlink->parsed()) return UnlinkCommand(global, names);
  if (purge_cmd->parsed()) return PurgeCommand(global, purge, owner, older_than, json);
  if (stats->parsed()) return StatsCommand(global, json);
  return kUsage;
}
