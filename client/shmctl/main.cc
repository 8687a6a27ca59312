// shmctl: see and clean up what shmbrokerd holds.
//
// Exit codes: 0 success, 1 an operation failed, 2 usage error, 3 the daemon could not be reached.
#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <shmbroker/client.h>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <iostream>
#include <map>
#include <set>

#include "format.h"

namespace shmbroker::shmctl {
namespace {

enum Exit { kOk = 0, kFailed = 1, kUsage = 2, kUnreachable = 3 };

std::string UserName(std::uint32_t uid) {
  struct passwd pw, *res = nullptr;
  char buf[4096];
  if (::getpwuid_r(uid, &pw, buf, sizeof(buf), &res) == 0 && res != nullptr) return pw.pw_name;
  return std::to_string(uid);
}

std::optional<std::uint32_t> ParseUser(const std::string& user) {
  struct passwd pw, *res = nullptr;
  char buf[4096];
  if (::getpwnam_r(user.c_str(), &pw, buf, sizeof(buf), &res) == 0 && res != nullptr) {
    return pw.pw_uid;
  }
  std::uint32_t uid = 0;
  auto [p, ec] = std::from_chars(user.data(), user.data() + user.size(), uid);
  if (ec == std::errc() && p == user.data() + user.size()) return uid;
  return std::nullopt;
}

int Fail(const Status& s, const std::string& what) {
  std::fprintf(stderr, "shmctl: %s: %s\n", what.c_str(), s.ToString().c_str());
  return s.code() == Code::kUnavailable ? kUnreachable : kFailed;
}

std::chrono::seconds Age(const SegmentInfo& s) {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now() -
                                                          s.created);
}

void SegmentJson(JsonWriter& j, const SegmentInfo& s) {
  double created = std::chrono::duration<double>(s.created.time_since_epoch()).count();
  double age = std::chrono::duration<double>(std::chrono::system_clock::now() - s.created).count();
  j.BeginObject();
  j.Key("name").String(s.name);
  j.Key("dtype").String(s.dtype);
  j.Key("shape").BeginArray();
  for (auto d : s.shape) j.Number(d);
  j.EndArray();
  j.Key("order").String(s.order == Order::kF ? "F" : "C");
  j.Key("nbytes").Number(s.nbytes);
  j.Key("owner").String(UserName(s.uid));
  j.Key("uid").Number(std::uint64_t{s.uid});
  j.Key("gid").Number(std::uint64_t{s.gid});
  j.Key("mode").String(ModeString(s.mode));
  j.Key("attachments").Number(std::uint64_t{s.attachments});
  j.Key("creator_pid").Number(std::uint64_t{s.creator_pid});
  j.Key("creator_connected").Bool(s.creator_connected);
  j.Key("created").String(Iso8601(s.created));
  j.Key("created_unix").Number(created);
  j.Key("age_seconds").Number(age < 0 ? 0.0 : age);
  j.Key("attrs").BeginObject();
  for (const auto& [k, v] : s.attrs) j.Key(k).String(v);
  j.EndObject();
  j.EndObject();
}

std::string AttrsString(const std::map<std::string, std::string>& attrs) {
  std::string s;
  for (const auto& [k, v] : attrs) {
    if (!s.empty()) s += ",";
    s += k + "=" + v;
  }
  return s.empty() ? "-" : s;
}

// A left-aligned table; the last column is not padded.
void PrintTable(const std::vector<std::vector<std::string>>& rows, bool bold_header) {
  std::vector<std::size_t> width;
  for (const auto& r : rows) {
    width.resize(std::max(width.size(), r.size()));
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  for (std::size_t n = 0; n < rows.size(); ++n) {
    std::string line;
    for (std::size_t i = 0; i < rows[n].size(); ++i) {
      line += rows[n][i];
      if (i + 1 < rows[n].size()) line += std::string(width[i] - rows[n][i].size() + 2, ' ');
    }
    if (n == 0 && bold_header) line = "\033[1m" + line + "\033[0m";
    std::printf("%s\n", line.c_str());
  }
}

struct Options {
  std::string socket;
};

Result<Client> Connect(const Options& o) {
  return Client::Connect({.socket_path = o.socket, .client_name = "shmctl"});
}

int List(const Options& o, const std::vector<std::string>& patterns, bool json, bool long_fmt) {
  auto client = Connect(o);
  if (!client.ok()) return Fail(client.status(), "connect");
  std::map<std::string, SegmentInfo> found;  // Sorted by name, each once.
  std::vector<std::string> pats = patterns.empty() ? std::vector<std::string>{""} : patterns;
  for (const auto& p : pats) {
    auto list = client->List(p);
    if (!list.ok()) return Fail(list.status(), "list");
    for (auto& s : *list) found.emplace(s.name, std::move(s));
  }
  if (json) {
    JsonWriter j;
    j.BeginObject().Key("segments").BeginArray();
    for (const auto& [name, s] : found) SegmentJson(j, s);
    j.EndArray().EndObject();
    std::printf("%s\n", j.str().c_str());
    return kOk;
  }
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"NAME", "DTYPE", "SHAPE", "SIZE", "OWNER", "MODE", "ATTACHED", "AGE"});
  if (long_fmt) rows[0].insert(rows[0].end(), {"PID", "CREATED", "ATTRS"});
  for (const auto& [name, s] : found) {
    rows.push_back({s.name, s.dtype, ShapeString(s.shape), HumanBytes(s.nbytes), UserName(s.uid),
                    ModeString(s.mode), std::to_string(s.attachments), HumanAge(Age(s))});
    if (long_fmt) {
      rows.back().insert(rows.back().end(),
                         {std::to_string(s.creator_pid), Iso8601(s.created), AttrsString(s.attrs)});
    }
  }
  PrintTable(rows, ::isatty(STDOUT_FILENO));
  return kOk;
}

int Info(const Options& o, const std::string& name, bool json) {
  auto client = Connect(o);
  if (!client.ok()) return Fail(client.status(), "connect");
  auto s = client->Stat(name);
  if (!s.ok()) return Fail(s.status(), "info '" + name + "'");
  if (json) {
    JsonWriter j;
    SegmentJson(j, *s);
    std::printf("%s\n", j.str().c_str());
    return kOk;
  }
  std::vector<std::vector<std::string>> rows = {
      {"name:", s->name},
      {"dtype:", s->dtype},
      {"shape:", ShapeString(s->shape)},
      {"order:", s->order == Order::kF ? "F" : "C"},
      {"size:", HumanBytes(s->nbytes) + " (" + std::to_string(s->nbytes) + " bytes)"},
      {"owner:", UserName(s->uid) + " (uid " + std::to_string(s->uid) + ", gid " +
                     std::to_string(s->gid) + ")"},
      {"mode:", ModeString(s->mode)},
      {"attached:", std::to_string(s->attachments)},
      {"creator:", "pid " + std::to_string(s->creator_pid) +
                       (s->creator_connected ? " (connected)" : " (gone)")},
      {"created:", Iso8601(s->created) + " (" + HumanAge(Age(*s)) + " ago)"},
  };
  for (const auto& [k, v] : s->attrs) rows.push_back({"attr " + k + ":", v});
  PrintTable(rows, false);
  return kOk;
}

int Unlink(const Options& o, const std::vector<std::string>& names) {
  auto client = Connect(o);
  if (!client.ok()) return Fail(client.status(), "connect");
  int rc = kOk;
  for (const auto& n : names) {
    Status s = client->Unlink(n);
    if (s.ok()) {
      std::printf("unlinked %s\n", n.c_str());
    } else {
      if (Fail(s, "unlink '" + n + "'") == kUnreachable) return kUnreachable;
      rc = kFailed;
    }
  }
  return rc;
}

int Purge(const Options& o, PurgeOptions p, const std::string& owner, bool json) {
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
  auto client = Connect(o);
  if (!client.ok()) return Fail(client.status(), "connect");
  auto r = client->Purge(p);
  if (!r.ok()) return Fail(r.status(), "purge");
  if (json) {
    JsonWriter j;
    j.BeginObject();
    j.Key("dry_run").Bool(p.dry_run);
    j.Key("removed").BeginArray();
    for (const auto& x : r->removed) {
      j.BeginObject().Key("name").String(x.name).Key("nbytes").Number(x.nbytes);
      j.Key("owner").String(UserName(x.uid)).Key("uid").Number(std::uint64_t{x.uid}).EndObject();
    }
    j.EndArray();
    j.Key("truncated").Bool(r->truncated);
    j.Key("removed_count").Number(r->removed_count);
    j.Key("bytes_freed").Number(r->bytes_freed);
    j.Key("skipped_not_owner").Number(r->skipped_not_owner);
    j.EndObject();
    std::printf("%s\n", j.str().c_str());
    return kOk;
  }
  const char* verb = p.dry_run ? "would remove" : "removed";
  for (const auto& x : r->removed) {
    std::printf("%s %s (%s)\n", verb, x.name.c_str(), HumanBytes(x.nbytes).c_str());
  }
  if (r->truncated) {
    std::printf("... and %llu more\n",
                static_cast<unsigned long long>(r->removed_count - r->removed.size()));
  }
  std::printf("%s %llu segment%s, %s%s\n", p.dry_run ? "would remove" : "removed",
              static_cast<unsigned long long>(r->removed_count), r->removed_count == 1 ? "" : "s",
              HumanBytes(r->bytes_freed).c_str(), p.dry_run ? "" : " freed");
  if (r->skipped_not_owner > 0) {
    std::printf(
        "skipped %llu matching segment%s owned by other users (only root may remove them)\n",
        static_cast<unsigned long long>(r->skipped_not_owner),
        r->skipped_not_owner == 1 ? "" : "s");
  }
  return kOk;
}

int Stats(const Options& o, bool json) {
  auto client = Connect(o);
  if (!client.ok()) return Fail(client.status(), "connect");
  auto s = client->Stats();
  if (!s.ok()) return Fail(s.status(), "stats");
  double uptime =
      std::chrono::duration<double>(std::chrono::system_clock::now() - s->started).count();
  if (json) {
    JsonWriter j;
    j.BeginObject();
    j.Key("version").String(s->version);
    j.Key("pid").Number(std::uint64_t{s->pid});
    j.Key("socket").String(s->socket_path);
    j.Key("started").String(Iso8601(s->started));
    j.Key("uptime_seconds").Number(uptime);
    j.Key("segments").Number(s->segments);
    j.Key("bytes_held").Number(s->bytes_held);
    j.Key("max_memory").Number(s->max_memory);
    j.Key("clients").Number(std::uint64_t{s->clients});
    j.Key("requests").BeginObject();
    for (const auto& [k, v] : s->requests) j.Key(k).Number(v);
    j.EndObject();
    j.Key("errors").BeginObject();
    for (const auto& [k, v] : s->errors) j.Key(k).Number(v);
    j.EndObject();
    j.EndObject();
    std::printf("%s\n", j.str().c_str());
    return kOk;
  }
  // Text shows what happened; --json has every counter.
  auto counters = [](const std::map<std::string, std::uint64_t>& m) {
    std::string out;
    for (const auto& [k, v] : m) {
      if (v != 0) out += (out.empty() ? "" : " ") + k + "=" + std::to_string(v);
    }
    return out.empty() ? std::string("none") : out;
  };
  std::vector<std::vector<std::string>> rows = {
      {"version:", s->version},
      {"pid:", std::to_string(s->pid)},
      {"socket:", s->socket_path},
      {"uptime:", HumanAge(std::chrono::seconds(static_cast<long long>(uptime))) + " (since " +
                      Iso8601(s->started) + ")"},
      {"segments:", std::to_string(s->segments)},
      {"memory:", HumanBytes(s->bytes_held) + " held, cap " +
                      (s->max_memory == 0 ? std::string("none") : HumanBytes(s->max_memory))},
      {"clients:", std::to_string(s->clients)},
      {"requests:", counters(s->requests)},
      {"errors:", counters(s->errors)},
  };
  PrintTable(rows, false);
  return kOk;
}

}  // namespace
}  // namespace shmbroker::shmctl

int main(int argc, char** argv) {
  using namespace shmbroker::shmctl;
  CLI::App app{"shmctl: inspect and clean up the segments shmbrokerd holds"};
  app.require_subcommand(1);
  Options opts;
  app.add_option("--socket", opts.socket,
                 "Daemon socket (default: $SHMBROKER_SOCKET, else the standard path)");
  app.set_version_flag("--version", std::string("shmctl ") + SHMBROKER_VERSION);

  std::vector<std::string> patterns, names;
  bool json = false, long_fmt = false;
  std::string info_name, owner, older_than;
  shmbroker::PurgeOptions purge;

  auto* list = app.add_subcommand("list", "One row per segment, sorted by name");
  list->add_option("PATTERN", patterns, "Shell-style globs (job7/*); all segments if none");
  list->add_flag("--json", json, "One JSON document (see README)");
  list->add_flag("--long,-l", long_fmt, "Add creator pid, creation time and attributes");

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
  if (!older_than.empty()) {
    purge.older_than = ParseDuration(older_than);
    if (!purge.older_than) {
      std::fprintf(stderr,
                   "shmctl: purge: --older-than '%s' is not a duration like 90s, 10m, 2h, 7d\n",
                   older_than.c_str());
      return kUsage;
    }
  }
  if (list->parsed()) return List(opts, patterns, json, long_fmt);
  if (info->parsed()) return Info(opts, info_name, json);
  if (unlink->parsed()) return Unlink(opts, names);
  if (purge_cmd->parsed()) return Purge(opts, purge, owner, json);
  if (stats->parsed()) return Stats(opts, json);
  return kUsage;
}
