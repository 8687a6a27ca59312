#include "render.h"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <unordered_map>
#include <utility>

#include "common/text.h"
#include "format.h"

namespace shmbroker::shmctl {
namespace {

std::chrono::seconds Age(const SegmentInfo& s, const RenderContext& ctx) {
  return std::chrono::duration_cast<std::chrono::seconds>(ctx.now - s.created);
}

std::string_view LifetimeName(Lifetime l) {
  switch (l) {
    case Lifetime::kConnection:
      return "connection";
    case Lifetime::kRefcount:
      return "refcount";
    case Lifetime::kPersistent:
      break;
  }
  return "persistent";
}

// "in 5m" (or "due" once past) when a ttl unlinks it, "-" when nothing does.
std::string ExpiresString(const SegmentInfo& s, const RenderContext& ctx) {
  if (!s.expires) return "-";
  auto left = std::chrono::duration_cast<std::chrono::seconds>(*s.expires - ctx.now);
  return left.count() <= 0 ? "due" : "in " + HumanAge(left);
}

std::string AttrsString(const std::map<std::string, std::string>& attrs) {
  std::string s;
  for (const auto& [k, v] : attrs) {
    if (!s.empty()) s += ",";
    s += Printable(k) + "=" + Printable(v);
  }
  return s.empty() ? "-" : s;
}

void SegmentJson(JsonWriter& j, const SegmentInfo& s, const RenderContext& ctx,
                 bool with_holders = false) {
  // From the same whole milliseconds as "created", so that the two agree.
  double created = static_cast<double>(UnixMillis(s.created)) / 1000;
  double age = std::chrono::duration<double>(ctx.now - s.created).count();
  j.BeginObject();
  j.Key("name").String(s.name);
  j.Key("dtype").String(s.dtype);
  j.Key("shape").BeginArray();
  for (auto d : s.shape) j.Number(d);
  j.EndArray();
  j.Key("order").String(s.order == Order::kF ? "F" : "C");
  j.Key("nbytes").Number(s.nbytes);
  j.Key("owner").String(ctx.user_name(s.uid));
  j.Key("uid").Number(std::uint64_t{s.uid});
  j.Key("gid").Number(std::uint64_t{s.gid});
  j.Key("mode").String(ModeString(s.mode));
  j.Key("attachments").Number(std::uint64_t{s.attachments});
  j.Key("creator_pid").Number(std::uint64_t{s.creator_pid});
  j.Key("creator_connected").Bool(s.creator_connected);
  j.Key("created").String(Iso8601(s.created));
  j.Key("created_unix").Number(created);
  j.Key("age_seconds").Number(age < 0 ? 0.0 : age);
  j.Key("lifetime").String(LifetimeName(s.lifetime));
  if (s.expires) {
    j.Key("expires").String(Iso8601(*s.expires));
    j.Key("expires_unix").Number(static_cast<double>(UnixMillis(*s.expires)) / 1000);
  } else {
    j.Key("expires").Null();
    j.Key("expires_unix").Null();
  }
  j.Key("sealed").Bool(s.sealed);
  j.Key("in_flight").Number(std::uint64_t{s.in_flight});
  j.Key("attrs").BeginObject();
  for (const auto& [k, v] : s.attrs) j.Key(k).String(v);
  j.EndObject();
  if (with_holders) {
    j.Key("holders").BeginArray();
    for (const auto& h : s.holders) {
      j.BeginObject();
      j.Key("pid").Number(std::uint64_t{h.pid});
      j.Key("uid").Number(std::uint64_t{h.uid});
      j.Key("user").String(ctx.user_name(h.uid));
      j.Key("client").String(h.client_name);
      j.Key("attachments").Number(std::uint64_t{h.attachments});
      j.Key("writable").Number(std::uint64_t{h.writable});
      j.EndObject();
    }
    j.EndArray();
    j.Key("holders_truncated").Bool(s.holders_truncated);
  }
  j.EndObject();
}

}  // namespace

UserNamer CachingUserNamer(UserNamer namer) {
  auto names = std::make_shared<std::unordered_map<std::uint32_t, std::string>>();
  return [namer = std::move(namer), names](std::uint32_t uid) {
    auto it = names->find(uid);
    if (it == names->end()) it = names->emplace(uid, namer(uid)).first;
    return it->second;
  };
}

std::string Table(const std::vector<std::vector<std::string>>& rows, bool bold_header) {
  std::vector<std::size_t> width;
  for (const auto& r : rows) {
    width.resize(std::max(width.size(), r.size()));
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  std::string out;
  for (std::size_t n = 0; n < rows.size(); ++n) {
    std::string line;
    for (std::size_t i = 0; i < rows[n].size(); ++i) {
      line += rows[n][i];
      if (i + 1 < rows[n].size()) line += std::string(width[i] - rows[n][i].size() + 2, ' ');
    }
    if (n == 0 && bold_header) line = "\033[1m" + line + "\033[0m";
    out += line + "\n";
  }
  return out;
}

std::string ListText(const std::vector<SegmentInfo>& segments, bool long_format,
                     const RenderContext& ctx) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"NAME", "DTYPE", "SHAPE", "SIZE", "OWNER", "MODE", "LIFETIME", "EXPIRES",
                  "SEALED", "ATTACHED", "AGE"});
  if (long_format) rows[0].insert(rows[0].end(), {"PID", "CREATED", "ATTRS"});
  for (const auto& s : segments) {
    rows.push_back({Printable(s.name), Printable(s.dtype), ShapeString(s.shape),
                    HumanBytes(s.nbytes), ctx.user_name(s.uid), ModeString(s.mode),
                    std::string(LifetimeName(s.lifetime)), ExpiresString(s, ctx),
                    s.sealed ? "yes" : "-", std::to_string(s.attachments), HumanAge(Age(s, ctx))});
    if (long_format) {
      rows.back().insert(rows.back().end(),
                         {std::to_string(s.creator_pid), Iso8601(s.created), AttrsString(s.attrs)});
    }
  }
  std::string out = Table(rows, ctx.bold_header);
  if (ctx.terminal) {
    std::uint64_t bytes = 0;
    for (const auto& s : segments) bytes += s.nbytes;
    out += std::to_string(segments.size()) + " segment" + (segments.size() == 1 ? "" : "s") + ", " +
           HumanBytes(bytes) + "\n";
  }
  return out;
}

std::string ListNames(const std::vector<SegmentInfo>& segments) {
  std::string out;
  for (const auto& s : segments) out += Printable(s.name) + "\n";
  return out;
}

std::string ListJson(const std::vector<SegmentInfo>& segments, const RenderContext& ctx) {
  JsonWriter j;
  j.BeginObject().Key("segments").BeginArray();
  for (const auto& s : segments) SegmentJson(j, s, ctx);
  j.EndArray().EndObject();
  return j.str() + "\n";
}

std::string UnlinkedText(const std::vector<SegmentInfo>& segments, const RenderContext& ctx) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"NAME", "SIZE", "OWNER", "AGE", "HELD BY"});
  std::uint64_t bytes = 0;
  for (const auto& s : segments) {
    bytes += s.nbytes;
    std::string held;
    for (const Holder& h : s.holders) {
      if (!held.empty()) held += ", ";
      held += "pid " + std::to_string(h.pid) + " '" + Printable(h.client_name) + "' (" +
              (h.attachments == 0 ? std::string("mapped") : std::to_string(h.attachments)) + ")";
    }
    if (s.holders_truncated) held += ", ...";
    rows.push_back({Printable(s.name), HumanBytes(s.nbytes), ctx.user_name(s.uid),
                    HumanAge(Age(s, ctx)), held.empty() ? "-" : held});
  }
  std::string out = Table(rows, ctx.bold_header);
  if (ctx.terminal) {
    out += std::to_string(segments.size()) + " unlinked segment" +
           (segments.size() == 1 ? "" : "s") + " in use, " + HumanBytes(bytes) + "\n";
  }
  return out;
}

std::string UnlinkedJson(const std::vector<SegmentInfo>& segments, const RenderContext& ctx) {
  JsonWriter j;
  j.BeginObject().Key("unlinked").BeginArray();
  for (const auto& s : segments) SegmentJson(j, s, ctx, /*with_holders=*/true);
  j.EndArray().EndObject();
  return j.str() + "\n";
}

std::string InfoText(const SegmentInfo& s, const RenderContext& ctx) {
  std::vector<std::vector<std::string>> rows = {
      {"name:", Printable(s.name)},
      {"dtype:", Printable(s.dtype)},
      {"shape:", ShapeString(s.shape)},
      {"order:", s.order == Order::kF ? "F" : "C"},
      {"size:", HumanBytes(s.nbytes) + " (" + std::to_string(s.nbytes) + " bytes)"},
      {"owner:", ctx.user_name(s.uid) + " (uid " + std::to_string(s.uid) + ", gid " +
                     std::to_string(s.gid) + ")"},
      {"mode:", ModeString(s.mode)},
      {"lifetime:", std::string(LifetimeName(s.lifetime))},
      {"expires:", s.expires ? Iso8601(*s.expires) + " (" + ExpiresString(s, ctx) + ")" : "-"},
      {"sealed:", s.sealed ? "yes" : "no"},
      {"attached:", std::to_string(s.attachments) +
                        (s.in_flight ? " (+" + std::to_string(s.in_flight) + " in flight)" : "")},
      {"creator:",
       "pid " + std::to_string(s.creator_pid) + (s.creator_connected ? " (connected)" : " (gone)")},
      {"created:", Iso8601(s.created) + " (" + HumanAge(Age(s, ctx)) + " ago)"},
  };
  for (const auto& [k, v] : s.attrs) rows.push_back({"attr " + Printable(k) + ":", Printable(v)});
  if (s.holders.empty()) rows.push_back({"held by:", "-"});
  for (std::size_t i = 0; i < s.holders.size(); ++i) {
    const Holder& h = s.holders[i];
    rows.push_back(
        {i == 0 ? "held by:" : "",
         "pid " + std::to_string(h.pid) + ", " + ctx.user_name(h.uid) + ", '" +
             Printable(h.client_name) + "': " + std::to_string(h.attachments) + " attachment" +
             (h.attachments == 1 ? "" : "s") +
             (h.writable > 0 ? " (" + std::to_string(h.writable) + " read-write)" : "")});
  }
  if (s.holders_truncated) rows.push_back({"", "... and more"});
  return Table(rows, false);
}

std::string InfoJson(const SegmentInfo& s, const RenderContext& ctx) {
  JsonWriter j;
  SegmentJson(j, s, ctx, /*with_holders=*/true);
  return j.str() + "\n";
}

std::string PurgeText(const PurgeResult& r, bool dry_run) {
  std::string out;
  const char* verb = dry_run ? "would remove" : "removed";
  for (const auto& x : r.removed) {
    out += std::string(verb) + " " + Printable(x.name) + " (" + HumanBytes(x.nbytes) + ")\n";
  }
  if (r.truncated) {
    out += "... and " + std::to_string(r.removed_count - r.removed.size()) + " more\n";
  }
  out += std::string(verb) + " " + std::to_string(r.removed_count) + " segment" +
         (r.removed_count == 1 ? "" : "s") + ", " + HumanBytes(r.bytes_freed) +
         (dry_run ? "" : " freed") + "\n";
  if (r.skipped_not_owner > 0) {
    out += "skipped " + std::to_string(r.skipped_not_owner) + " matching segment" +
           (r.skipped_not_owner == 1 ? "" : "s") +
           " owned by other users (only root may remove them)\n";
  }
  return out;
}

std::string PurgeJson(const PurgeResult& r, bool dry_run, const RenderContext& ctx) {
  JsonWriter j;
  j.BeginObject();
  j.Key("dry_run").Bool(dry_run);
  j.Key("removed").BeginArray();
  for (const auto& x : r.removed) {
    j.BeginObject().Key("name").String(x.name).Key("nbytes").Number(x.nbytes);
    j.Key("owner").String(ctx.user_name(x.uid)).Key("uid").Number(std::uint64_t{x.uid});
    j.EndObject();
  }
  j.EndArray();
  j.Key("truncated").Bool(r.truncated);
  j.Key("removed_count").Number(r.removed_count);
  j.Key("bytes_freed").Number(r.bytes_freed);
  j.Key("skipped_not_owner").Number(r.skipped_not_owner);
  j.EndObject();
  return j.str() + "\n";
}

std::string TrimText(const TrimResult& t) {
  return "released " + HumanBytes(t.bytes_released) + " of the warm pool (" +
         std::to_string(t.segments_released) + " memfd" + (t.segments_released == 1 ? "" : "s") +
         ")\n";
}

std::string TrimJson(const TrimResult& t) {
  JsonWriter j;
  j.BeginObject();
  j.Key("bytes_released").Number(t.bytes_released);
  j.Key("segments_released").Number(t.segments_released);
  j.EndObject();
  return j.str() + "\n";
}

std::string StatsText(const DaemonStats& s, const RenderContext& ctx) {
  double uptime = std::chrono::duration<double>(ctx.now - s.started).count();
  // Text shows what happened; --json has every counter.
  auto counters = [](const std::map<std::string, std::uint64_t>& m) {
    std::string out;
    for (const auto& [k, v] : m) {
      if (v != 0) out += (out.empty() ? "" : " ") + k + "=" + std::to_string(v);
    }
    return out.empty() ? std::string("none") : out;
  };
  auto count = [](std::uint64_t n) { return std::to_string(n); };
  auto none_or = [](std::uint64_t v, auto show) {
    return v == 0 ? std::string("no cap") : show(v);
  };
  std::vector<std::vector<std::string>> rows = {
      {"version:", s.version},
      {"pid:", std::to_string(s.pid)},
      {"socket:", s.socket_path},
      {"uptime:", HumanAge(std::chrono::seconds(static_cast<long long>(uptime))) + " (since " +
                      Iso8601(s.started) + ")"},
      {"segments:", std::to_string(s.segments)},
      {"memory:", HumanBytes(s.bytes_held) + " held, cap " +
                      (s.max_memory == 0 ? std::string("none") : HumanBytes(s.max_memory))},
      {"unlinked:", std::to_string(s.unlinked_segments) + " segment" +
                        (s.unlinked_segments == 1 ? "" : "s") + " (" +
                        HumanBytes(s.unlinked_bytes) + ") still in use"},
      {"regions:", std::to_string(s.shared_regions) + " shared, holding " +
                       HumanBytes(s.shared_region_resident_bytes) + " (" +
                       HumanBytes(s.shared_region_free_bytes) + " free, kept for reuse)"},
      {"2M pages:", HumanBytes(s.huge_page_bytes) + " of segments on 2 MiB pages"},
      {"lifetime:", "unlinked by the daemon: " + counters(s.auto_unlinked) + "; " +
                        std::to_string(s.tickets_in_flight) + " tickets in flight (" +
                        std::to_string(s.tickets_lapsed) + " lapsed); " +
                        std::to_string(s.waiters) + " attaches waiting"},
      {"pool:", s.pool_max_bytes == 0
                    ? std::string("off")
                    : HumanBytes(s.pool_bytes) + " in " + std::to_string(s.pool_segments) +
                          " memfd" + (s.pool_segments == 1 ? "" : "s") + ", at most " +
                          HumanBytes(s.pool_max_bytes) + "; reused " +
                          std::to_string(s.pool_reused) + " times, released " +
                          HumanBytes(s.pool_released_bytes)},
      {"clients:", std::to_string(s.clients)},
      {"limits:", "per user " + none_or(s.limits.max_memory_per_user, HumanBytes) + " in " +
                      none_or(s.limits.max_segments_per_user, count) + " segments, " +
                      std::to_string(s.limits.max_connections_per_user) + " of " +
                      std::to_string(s.limits.max_connections) + " connections; " +
                      std::to_string(s.limits.max_attachments_per_connection) +
                      " attachments per connection; handshake " +
                      std::to_string(s.limits.handshake_timeout.count()) + " ms; fds " +
                      std::to_string(s.limits.fd_limit) + " (" +
                      std::to_string(s.limits.fd_reserve) + " kept for root)"},
      {"requests:", counters(s.requests)},
      {"errors:", counters(s.errors)},
      {"refused:", counters(s.refusals)},
      {"log:", std::to_string(s.log_lines_dropped) + " lines dropped"},
  };
  return Table(rows, false);
}

std::string StatsJson(const DaemonStats& s, const RenderContext& ctx) {
  double uptime = std::chrono::duration<double>(ctx.now - s.started).count();
  JsonWriter j;
  j.BeginObject();
  j.Key("version").String(s.version);
  j.Key("pid").Number(std::uint64_t{s.pid});
  j.Key("socket").String(s.socket_path);
  j.Key("started").String(Iso8601(s.started));
  j.Key("uptime_seconds").Number(uptime);
  j.Key("segments").Number(s.segments);
  j.Key("bytes_held").Number(s.bytes_held);
  j.Key("max_memory").Number(s.max_memory);
  j.Key("clients").Number(std::uint64_t{s.clients});
  j.Key("unlinked_segments").Number(s.unlinked_segments);
  j.Key("unlinked_bytes").Number(s.unlinked_bytes);
  j.Key("log_lines_dropped").Number(s.log_lines_dropped);
  j.Key("shared_regions").Number(s.shared_regions);
  j.Key("shared_region_resident_bytes").Number(s.shared_region_resident_bytes);
  j.Key("shared_region_free_bytes").Number(s.shared_region_free_bytes);
  j.Key("huge_page_bytes").Number(s.huge_page_bytes);
  j.Key("auto_unlinked").BeginObject();
  for (const auto& [k, v] : s.auto_unlinked) j.Key(k).Number(v);
  j.EndObject();
  j.Key("tickets_in_flight").Number(s.tickets_in_flight);
  j.Key("tickets_lapsed").Number(s.tickets_lapsed);
  j.Key("waiters").Number(std::uint64_t{s.waiters});
  j.Key("refusals").BeginObject();
  for (const auto& [k, v] : s.refusals) j.Key(k).Number(v);
  j.EndObject();
  j.Key("pool_bytes").Number(s.pool_bytes);
  j.Key("pool_segments").Number(s.pool_segments);
  j.Key("pool_max_bytes").Number(s.pool_max_bytes);
  j.Key("pool_reused").Number(s.pool_reused);
  j.Key("pool_released_bytes").Number(s.pool_released_bytes);
  const DaemonLimits& l = s.limits;
  j.Key("limits").BeginObject();
  j.Key("max_memory").Number(s.max_memory);
  j.Key("max_memory_per_user").Number(l.max_memory_per_user);
  j.Key("max_segments_per_user").Number(l.max_segments_per_user);
  j.Key("max_connections").Number(std::uint64_t{l.max_connections});
  j.Key("max_connections_per_user").Number(std::uint64_t{l.max_connections_per_user});
  j.Key("max_attachments_per_connection").Number(std::uint64_t{l.max_attachments_per_connection});
  j.Key("handshake_timeout_ms").Number(static_cast<std::uint64_t>(l.handshake_timeout.count()));
  j.Key("fd_limit").Number(l.fd_limit);
  j.Key("fd_reserve").Number(l.fd_reserve);
  j.EndObject();
  j.Key("requests").BeginObject();
  for (const auto& [k, v] : s.requests) j.Key(k).Number(v);
  j.EndObject();
  j.Key("errors").BeginObject();
  for (const auto& [k, v] : s.errors) j.Key(k).Number(v);
  j.EndObject();
  j.EndObject();
  return j.str() + "\n";
}

std::string StatsPrometheus(const DaemonStats& s, const RenderContext& ctx) {
  using Labels = std::vector<std::pair<std::string, std::string>>;
  std::string out;
  std::string family;
  // HELP and TYPE once per family, then its samples (the format wants a family's lines together).
  auto begin = [&](const std::string& name, const char* type, const char* help) {
    family = "shmbroker_" + name;
    out += "# HELP " + family + " " + help + "\n# TYPE " + family + " " + type + "\n";
  };
  auto sample = [&](const std::string& value, const Labels& labels = {}) {
    out += family;
    for (std::size_t i = 0; i < labels.size(); ++i) {
      out += (i == 0 ? "{" : ",") + labels[i].first + "=\"" +
             PrometheusLabelValue(labels[i].second) + "\"";
    }
    out += (labels.empty() ? " " : "} ") + value + "\n";
  };
  auto seconds = [](double v) {
    char buf[40];
    std::snprintf(buf, sizeof(buf), "%.3f", v);
    return std::string(buf);
  };
  auto gauge = [&](const std::string& name, std::uint64_t v, const char* help) {
    begin(name, "gauge", help);
    sample(std::to_string(v));
  };
  auto counter = [&](const std::string& name, std::uint64_t v, const char* help) {
    begin(name, "counter", help);
    sample(std::to_string(v));
  };
  auto by_label = [&](const std::string& name, const char* label,
                      const std::map<std::string, std::uint64_t>& counts, const char* help) {
    begin(name, "counter", help);
    for (const auto& [k, v] : counts) sample(std::to_string(v), {{label, k}});
  };
  const DaemonLimits& l = s.limits;

  begin("info", "gauge", "The daemon's version, pid and socket path; always 1");
  sample("1", {{"version", s.version}, {"pid", std::to_string(s.pid)}, {"socket", s.socket_path}});
  begin("start_time_seconds", "gauge", "When the daemon started, in seconds since the Unix epoch");
  sample(seconds(static_cast<double>(UnixMillis(s.started)) / 1000));
  double uptime = std::chrono::duration<double>(ctx.now - s.started).count();
  begin("uptime_seconds", "gauge", "Seconds since the daemon started");
  sample(seconds(uptime < 0 ? 0.0 : uptime));
  gauge("segments", s.segments, "Named segments the daemon holds");
  gauge("bytes_held", s.bytes_held,
        "Bytes of segment memory held, including unlinked segments still in use");
  gauge("unlinked_segments", s.unlinked_segments,
        "Unlinked segments whose memory is still in use (attached or mapped)");
  gauge("unlinked_bytes", s.unlinked_bytes,
        "Bytes of unlinked segments still in use (counted in shmbroker_bytes_held)");
  gauge("shared_regions", s.shared_regions, "Shared regions holding small segments");
  gauge("shared_region_resident_bytes", s.shared_region_resident_bytes,
        "Bytes of memory the shared regions hold");
  gauge("shared_region_free_bytes", s.shared_region_free_bytes,
        "Bytes of the shared regions in no segment's block, kept zeroed for reuse");
  gauge("huge_page_bytes", s.huge_page_bytes, "Bytes of segment memory backed by 2 MiB pages");
  // Every cause always has its series, so a rate() sees it start from 0.
  std::map<std::string, std::uint64_t> causes = {{"connection", 0}, {"refcount", 0}, {"ttl", 0}};
  for (const auto& [k, v] : s.auto_unlinked) causes[k] = v;
  by_label("auto_unlinked_total", "cause", causes,
           "Segments the daemon unlinked by itself, by cause (connection, refcount, ttl)");
  gauge("tickets_in_flight", s.tickets_in_flight,
        "Refcount arrays pickled to another process and not yet unpickled there");
  counter("tickets_lapsed_total", s.tickets_lapsed,
          "Pickled refcount arrays given up after --in-flight-timeout, never unpickled");
  gauge("waiters", s.waiters, "Attaches waiting in the daemon for a segment (attach wait=)");
  gauge("pool_bytes", s.pool_bytes,
        "Bytes of released segments' memory the warm pool keeps zeroed for reuse");
  gauge("pool_segments", s.pool_segments, "Memfds in the warm pool");
  gauge("pool_max_bytes", s.pool_max_bytes, "--warm-pool: what the pool may keep (0: no pool)");
  counter("pool_reused_total", s.pool_reused, "Creates served from the warm pool");
  counter("pool_released_bytes_total", s.pool_released_bytes,
          "Bytes the warm pool gave back (caps, memory pressure, trim)");
  gauge("clients", s.clients, "Connected clients");
  by_label("requests_total", "op", s.requests, "Requests served, by operation");
  by_label("refusals_total", "limit", s.refusals,
           "Requests and connections refused at a limit, by limit (memory_per_user, "
           "segments_per_user, max_memory, connections, ...)");
  by_label("errors_total", "code", s.errors,
           "Requests answered with an error, by status code (RESOURCE_EXHAUSTED: refused at a "
           "memory, segment or descriptor limit)");
  counter("log_lines_dropped_total", s.log_lines_dropped,
          "Log lines dropped because the daemon's stderr did not keep up");
  gauge("max_memory_bytes", s.max_memory, "--max-memory: cap on all segments' bytes (0: none)");
  gauge("max_memory_per_user_bytes", l.max_memory_per_user,
        "--max-memory-per-user: cap on one owner's bytes (0: none)");
  gauge("max_segments_per_user", l.max_segments_per_user,
        "--max-segments-per-user: cap on one owner's segments (0: none)");
  gauge("max_connections", l.max_connections, "--max-connections: clients connected at once");
  gauge("max_connections_per_user", l.max_connections_per_user,
        "--max-connections-per-user: clients of one uid at once");
  gauge("max_attachments_per_connection", l.max_attachments_per_connection,
        "--max-attachments-per-connection: attachments one connection holds");
  begin("handshake_timeout_seconds", "gauge",
        "--handshake-timeout: how long a new connection may take to say hello");
  sample(seconds(static_cast<double>(l.handshake_timeout.count()) / 1000));
  gauge("fd_limit", l.fd_limit, "The daemon's file descriptor limit (RLIMIT_NOFILE)");
  gauge("fd_reserve", l.fd_reserve,
        "File descriptors kept for connected clients and root at the limit");
  return out;
}

}  // namespace shmbroker::shmctl
