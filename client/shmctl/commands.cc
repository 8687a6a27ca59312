#include "commands.h"

#include <pwd.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string_view>

#include "common/trust.h"
#include "format.h"
#include "render.h"

namespace shmbroker::shmctl {
namespace {

int Fail(const Status& s, const std::string& what) {
  std::fprintf(stderr, "shmctl: %s: %s\n", what.c_str(), s.ToString().c_str());
  return s.code() == Code::kUnavailable ? kUnreachable : kFailed;
}

RenderContext Context() {
  bool terminal = ::isatty(STDOUT_FILENO) != 0;
  // https://no-color.org: set and not empty. A dumb terminal shows escapes as garbage.
  const char* no_color = std::getenv("NO_COLOR");
  const char* term = std::getenv("TERM");
  bool color = terminal && (no_color == nullptr || *no_color == '\0') &&
               (term == nullptr || std::string_view(term) != "dumb");
  return {.now = std::chrono::system_clock::now(),
          .user_name = CachingUserNamer(UserName),
          .terminal = terminal,
          .bold_header = color};
}

bool LooksLikeAPattern(std::string_view name) {
  return name.find_first_of("*?[") != std::string_view::npos;
}

// A failed lookup of `name` by a command that takes exact names: a glob gets a pointer to the
// commands that take patterns.
int FailByName(const Status& s, const std::string& command, const std::string& name) {
  int rc = Fail(s, command + " '" + name + "'");
  if (s.code() == Code::kNotFound && LooksLikeAPattern(name)) {
    std::fprintf(stderr,
                 "shmctl: %s takes exact names, not patterns: use 'shmctl list %s' to see what "
                 "matches, 'shmctl purge %s' to unlink it\n",
                 command.c_str(), name.c_str(), name.c_str());
  }
  return rc;
}

void Print(const std::string& text) { std::fwrite(text.data(), 1, text.size(), stdout); }

Result<Client> Connect(const GlobalOptions& g) {
  return Client::Connect({.socket_path = g.socket, .client_name = "shmctl"});
}

}  // namespace

int ListCommand(const GlobalOptions& g, const std::vector<std::string>& patterns, bool json,
                bool long_format, bool names_only) {
  auto client = Connect(g);
  if (!client.ok()) return Fail(client.status(), "connect");
  std::map<std::string, SegmentInfo> found;  // Sorted by name, each once.
  std::vector<std::string> pats = patterns.empty() ? std::vector<std::string>{""} : patterns;
  for (const auto& p : pats) {
    auto list = client->List(p);
    if (!list.ok()) return Fail(list.status(), "list");
    for (auto& s : *list) found.emplace(s.name, std::move(s));
  }
  std::vector<SegmentInfo> segments;
  for (auto& [name, s] : found) segments.push_back(std::move(s));
  RenderContext ctx = Context();
  if (json) {
    Print(ListJson(segments, ctx));
  } else {
    Print(names_only ? ListNames(segments) : ListText(segments, long_format, ctx));
  }
  return kOk;
}

int UnlinkedCommand(const GlobalOptions& g, const std::vector<std::string>& patterns, bool json) {
  auto client = Connect(g);
  if (!client.ok()) return Fail(client.status(), "connect");
  std::map<std::pair<std::string, std::int64_t>, SegmentInfo> found;  // Names can repeat.
  std::vector<std::string> pats = patterns.empty() ? std::vector<std::string>{""} : patterns;
  for (const auto& p : pats) {
    auto list = client->ListUnlinked(p);
    if (!list.ok()) return Fail(list.status(), "list");
    for (auto& s : *list) {
      auto key = std::make_pair(s.name, s.created.time_since_epoch().count());
      found.emplace(std::move(key), std::move(s));
    }
  }
  std::vector<SegmentInfo> segments;
  for (auto& [key, s] : found) segments.push_back(std::move(s));
  RenderContext ctx = Context();
  Print(json ? UnlinkedJson(segments, ctx) : UnlinkedText(segments, ctx));
  return kOk;
}

int InfoCommand(const GlobalOptions& g, const std::string& name, bool json) {
  auto client = Connect(g);
  if (!client.ok()) return Fail(client.status(), "connect");
  auto s = client->Stat(name);
  if (!s.ok()) return FailByName(s.status(), "info", name);
  RenderContext ctx = Context();
  Print(json ? InfoJson(*s, ctx) : InfoText(*s, ctx));
  return kOk;
}

int UnlinkCommand(const GlobalOptions& g, const std::vector<std::string>& names) {
  auto client = Connect(g);
  if (!client.ok()) return Fail(client.status(), "connect");
  int rc = kOk;
  for (const auto& n : names) {
    Status s = client->Unlink(n);
    if (s.ok()) {
      std::printf("unlinked %s\n", n.c_str());
    } else {
      if (FailByName(s, "unlink", n) == kUnreachable) return kUnreachable;
      rc = kFailed;
    }
  }
  return rc;
}

int PurgeCommand(const GlobalOptions& g, PurgeOptions p, const std::string& owner,
                 const std::string& older_than, bool json) {
  if (!older_than.empty()) {
    p.older_than = ParseDuration(older_than);
    if (!p.older_than) {
      std::fprintf(stderr,
                   "shmctl: purge: --older-than '%s' is not a duration like 90s, 10m, 2h, 7d\n",
                   older_than.c_str());
      return kUsage;
    }
  }
  if (!owner.empty()) {
    auto uid = ParseUser(owner);
    if (!uid) {
      std::fprintf(stderr, "shmctl: purge: no such user '%s'\n", owner.c_str());
      return kUsage;
    }
    p.owner_uid = *uid;
  }
  if (p.patterns.empty() && !p.orphans && !p.older_than && !p.owner_uid && !p.unattached &&
      !p.all) {
    std::fprintf(stderr,
                 "shmctl: purge: refusing to purge without a selector.\n"
                 "Say what to remove: PATTERN..., --orphans, --older-than DURATION, --owner USER, "
                 "--unattached, or --all for everything. Add --dry-run to see first.\n");
    return kUsage;
  }
  auto client = Connect(g);
  if (!client.ok()) return Fail(client.status(), "connect");
  auto r = client->Purge(p);
  if (!r.ok()) return Fail(r.status(), "purge");
  Print(json ? PurgeJson(*r, p.dry_run, Context()) : PurgeText(*r, p.dry_run));
  return kOk;
}

int TrimCommand(const GlobalOptions& g, bool json) {
  auto client = Connect(g);
  if (!client.ok()) return Fail(client.status(), "connect");
  auto t = client->Trim();
  if (!t.ok()) return Fail(t.status(), "trim");
  Print(json ? TrimJson(*t) : TrimText(*t));
  return kOk;
}

int StatsCommand(const GlobalOptions& g, bool json, bool prometheus) {
  auto client = Connect(g);
  if (!client.ok()) return Fail(client.status(), "connect");
  auto s = client->Stats();
  if (!s.ok()) return Fail(s.status(), "stats");
  RenderContext ctx = Context();
  Print(prometheus ? StatsPrometheus(*s, ctx) : json ? StatsJson(*s, ctx) : StatsText(*s, ctx));
  return kOk;
}

}  // namespace shmbroker::shmctl
