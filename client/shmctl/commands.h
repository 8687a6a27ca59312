// One function per shmctl subcommand: connect, ask the daemon, print (through render.h), and
// return the exit code.
#pragma once

#include <shmbroker/client.h>

#include <string>
#include <vector>

namespace shmbroker::shmctl {

// Exit codes.
enum Exit { kOk = 0, kFailed = 1, kUsage = 2, kUnreachable = 3 };

// Options every subcommand takes.
struct GlobalOptions {
  std::string socket;  // Empty: the usual resolution.
};

// `list --unlinked`: what keeps memory the daemon counts as unlinked but in use.
int UnlinkedCommand(const GlobalOptions& g, const std::vector<std::string>& patterns, bool json);
int ListCommand(const GlobalOptions& g, const std::vector<std::string>& patterns, bool json,
                bool long_format, bool names_only);
int InfoCommand(const GlobalOptions& g, const std::string& name, bool json);
int UnlinkCommand(const GlobalOptions& g, const std::vector<std::string>& names);
// `owner` is a user name or uid ("" for none); `older_than` a duration ("" for none).
int PurgeCommand(const GlobalOptions& g, PurgeOptions p, const std::string& owner,
                 const std::string& older_than, bool json);
int TrimCommand(const GlobalOptions& g, bool json);
// `prometheus`: the exposition format for node_exporter instead of text (never with `json`).
int StatsCommand(const GlobalOptions& g, bool json, bool prometheus);

}  // namespace shmbroker::shmctl
