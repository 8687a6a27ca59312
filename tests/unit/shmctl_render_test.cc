// shmctl's output as pure functions: fixed clock, fixed user names, exact text.
#include "render.h"

#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>
#include <sstream>

namespace shmbroker::shmctl {
namespace {

using namespace std::chrono_literals;

const auto kNow = std::chrono::system_clock::time_point(1'800'000'000s);

RenderContext Ctx() {
  return {.now = kNow,
          .user_name = [](std::uint32_t uid) { return uid == 0 ? "root" : std::to_string(uid); }};
}

SegmentInfo Seg(std::string name, std::uint64_t nbytes) {
  SegmentInfo s;
  s.name = std::move(name);
  s.dtype = "<f8";
  s.shape = {nbytes / 8};
  s.nbytes = nbytes;
  s.mode = 0644;
  s.uid = 0;
  s.creator_pid = 42;
  s.created = kNow - 90s;
  return s;
}

TEST(ShmctlRender, ListTextIsAnAlignedTable) {
  SegmentInfo b = Seg("job/bb", 4096);
  b.lifetime = Lifetime::kRefcount;
  b.expires = Ctx().now + std::chrono::minutes(5);
  b.sealed = true;
  std::string out = ListText({Seg("a", 8), b}, false, Ctx());
  EXPECT_EQ(out,
            "NAME    DTYPE  SHAPE   SIZE     OWNER  MODE  LIFETIME    EXPIRES  SEALED  ATTACHED  "
            "AGE\n"
            "a       <f8    (1,)    8 B      root   0644  persistent  -        -       0         "
            "90s\n"
            "job/bb  <f8    (512,)  4.0 KiB  root   0644  refcount    in 5m    yes     0         "
            "90s\n");
  EXPECT_EQ(ListText({}, false, Ctx()),
            "NAME  DTYPE  SHAPE  SIZE  OWNER  MODE  LIFETIME  EXPIRES  SEALED  ATTACHED  AGE\n");
}

TEST(ShmctlRender, JsonHasLifetimeExpiresAndSealed) {
  SegmentInfo b = Seg("b", 8);
  b.lifetime = Lifetime::kConnection;
  std::string out = ListJson({b}, Ctx());
  EXPECT_NE(out.find("\"lifetime\":\"connection\",\"expires\":null,\"expires_unix\":null,"
                     "\"sealed\":false,\"in_flight\":0"),
            std::string::npos)
      << out;
  b.expires = Ctx().now + std::chrono::seconds(30);
  b.sealed = true;
  out = ListJson({b}, Ctx());
  EXPECT_NE(out.find("\"expires\":\"2027-01-15T08:00:30.000Z\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"sealed\":true"), std::string::npos) << out;
}

TEST(ShmctlRender, ListLongAddsPidCreatedAndAttrs) {
  SegmentInfo s = Seg("a", 8);
  s.attrs = {{"k", "v"}, {"x", "y"}};
  std::string out = ListText({s}, true, Ctx());
  EXPECT_NE(out.find("PID  CREATED"), std::string::npos) << out;
  EXPECT_NE(out.find("42   2027-01-15T07:58:30.000Z  k=v,x=y"), std::string::npos) << out;
}

TEST(ShmctlRender, BoldHeaderOnlyWhenAsked) {
  RenderContext ctx = Ctx();
  EXPECT_EQ(ListText({}, false, ctx).find('\033'), std::string::npos);
  ctx.bold_header = true;
  EXPECT_EQ(ListText({}, false, ctx).rfind("\033[1mNAME", 0), 0u);
}

TEST(ShmctlRender, InfoText) {
  SegmentInfo s = Seg("job/w", 1536);
  s.creator_connected = true;
  s.attrs = {{"k", "v"}};
  std::string out = InfoText(s, Ctx());
  EXPECT_NE(out.find("size:      1.5 KiB (1536 bytes)\n"), std::string::npos) << out;
  EXPECT_NE(out.find("creator:   pid 42 (connected)\n"), std::string::npos) << out;
  EXPECT_NE(out.find("attr k:    v\n"), std::string::npos) << out;
}

TEST(ShmctlRender, PurgeTextCountsAndSkips) {
  PurgeResult r;
  r.removed = {{"a", 1024, 0}};
  r.removed_count = 3;
  r.truncated = true;
  r.bytes_freed = 3072;
  r.skipped_not_owner = 1;
  EXPECT_EQ(PurgeText(r, true),
            "would remove a (1.0 KiB)\n"
            "... and 2 more\n"
            "would remove 3 segments, 3.0 KiB\n"
            "skipped 1 matching segment owned by other users (only root may remove them)\n");
  r.truncated = false;
  r.removed_count = 1;
  r.bytes_freed = 1024;
  r.skipped_not_owner = 0;
  EXPECT_EQ(PurgeText(r, false), "removed a (1.0 KiB)\nremoved 1 segment, 1.0 KiB freed\n");
}

TEST(ShmctlRender, JsonDocuments) {
  std::string list = ListJson({Seg("a", 8)}, Ctx());
  EXPECT_EQ(list.rfind("{\"segments\":[{\"name\":\"a\",\"dtype\":\"<f8\",\"shape\":[1],", 0), 0u)
      << list;
  EXPECT_NE(list.find("\"age_seconds\":90.000"), std::string::npos) << list;
  PurgeResult r;
  r.removed = {{"a\"b", 8, 0}};
  r.removed_count = 1;
  EXPECT_NE(PurgeJson(r, true, Ctx()).find("\"name\":\"a\\\"b\""), std::string::npos);
  DaemonStats st;
  st.started = kNow - 25s;
  st.requests = {{"create", 3}, {"list", 0}};
  std::string stats = StatsJson(st, Ctx());
  EXPECT_NE(stats.find("\"uptime_seconds\":25.000"), std::string::npos) << stats;
  EXPECT_NE(stats.find("\"requests\":{\"create\":3,\"list\":0}"), std::string::npos) << stats;
}

TEST(ShmctlRender, JsonCreatedAndCreatedUnixAgreeToTheMillisecond) {
  SegmentInfo s = Seg("a", 8);
  // 0.9996 s past a second: rounding one form and cutting the other would disagree.
  s.created = std::chrono::system_clock::time_point(std::chrono::microseconds(1795000000999600));
  std::string json = InfoJson(s, Ctx());
  EXPECT_NE(json.find("\"created\":\"2026-11-18T11:06:40.999Z\",\"created_unix\":1795000000.999,"),
            std::string::npos)
      << json;
}

TEST(ShmctlRender, StatsTextShowsOnlyCountersThatMoved) {
  DaemonStats st;
  st.started = kNow - 25s;
  st.requests = {{"create", 3}, {"list", 0}};
  std::string out = StatsText(st, Ctx());
  EXPECT_NE(out.find("requests:  create=3\n"), std::string::npos) << out;
  EXPECT_NE(out.find("errors:    none\n"), std::string::npos) << out;
  EXPECT_NE(out.find("uptime:    25s (since "), std::string::npos) << out;
}

TEST(ShmctlRender, ListOnATerminalEndsWithTotals) {
  RenderContext ctx = Ctx();
  ctx.terminal = true;
  std::string out = ListText({Seg("a", 1024), Seg("b", 2048)}, false, ctx);
  EXPECT_EQ(out.substr(out.rfind('\n', out.size() - 2) + 1), "2 segments, 3.0 KiB\n") << out;
  EXPECT_EQ(ListNames({Seg("a", 8), Seg("b", 8)}), "a\nb\n");
}

TEST(ShmctlRender, InfoListsHolders) {
  SegmentInfo s = Seg("x", 8);
  EXPECT_NE(InfoText(s, Ctx()).find("held by:   -\n"), std::string::npos);
  s.holders = {{100, 0, "python:a.py", 2, 1}, {200, 1000, "shmctl", 1, 0}};
  std::string out = InfoText(s, Ctx());
  EXPECT_NE(out.find("held by:   pid 100, root, 'python:a.py': 2 attachments (1 read-write)\n"
                     "           pid 200, 1000, 'shmctl': 1 attachment\n"),
            std::string::npos)
      << out;
  std::string json = InfoJson(s, Ctx());
  EXPECT_NE(json.find("\"holders\":[{\"pid\":100,\"uid\":0,\"user\":\"root\","
                      "\"client\":\"python:a.py\",\"attachments\":2,\"writable\":1}"),
            std::string::npos)
      << json;
  EXPECT_EQ(ListJson({s}, Ctx()).find("holders"), std::string::npos) << "list has no holders";
}

// Client-chosen strings (attributes, client names; names and dtypes too, should a daemon ever
// let one through) cannot start a line, draw a fake row or send escape codes to the terminal.
TEST(ShmctlRender, ClientStringsAreEscapedInText) {
  SegmentInfo s = Seg("a", 8);
  const std::string forged = "x\nevil    <f8    (1,)    8 B      root   0644  0         1s\x1b[2J";
  s.attrs = {{"note", forged}, {"k\r", "v"}};
  s.dtype = "<f8\n";
  s.holders = {{.pid = 7, .uid = 0, .client_name = "py\n2026 info forged line", .attachments = 1}};
  for (const std::string& out :
       {ListText({s}, true, Ctx()), InfoText(s, Ctx()), ListNames({Seg("n\nm", 8)})}) {
    EXPECT_EQ(out.find('\x1b'), std::string::npos) << out;
    EXPECT_EQ(out.find("\nevil"), std::string::npos) << out;
    EXPECT_EQ(out.find("\n2026"), std::string::npos) << out;
    EXPECT_EQ(out.find('\r'), std::string::npos) << out;
  }
  EXPECT_NE(ListText({s}, true, Ctx()).find("note=x\\x0aevil"), std::string::npos);
  EXPECT_NE(InfoText(s, Ctx()).find("'py\\x0a2026 info forged line'"), std::string::npos);
  // The JSON keeps the exact bytes, escaped the JSON way.
  EXPECT_NE(ListJson({s}, Ctx()).find("x\\nevil"), std::string::npos);
}

DaemonStats SampleStats() {
  DaemonStats st;
  st.version = "0.1.0";
  st.pid = 4242;
  st.socket_path = "/run/shmbroker/shmbroker.sock";
  st.started = kNow - 25s;
  st.segments = 3;
  st.bytes_held = 10'000;
  st.max_memory = 8ull << 30;
  st.clients = 2;
  st.requests = {{"create", 3}, {"list", 0}};
  st.errors = {{"NOT_FOUND", 1}, {"RESOURCE_EXHAUSTED", 2}};
  st.unlinked_segments = 1;
  st.unlinked_bytes = 4096;
  st.log_lines_dropped = 5;
  st.shared_regions = 1;
  st.shared_region_resident_bytes = 64 << 20;
  st.shared_region_free_bytes = 1 << 20;
  st.huge_page_bytes = 2 << 20;
  st.auto_unlinked = {{"refcount", 7}};
  st.tickets_in_flight = 2;
  st.tickets_lapsed = 1;
  st.waiters = 4;
  st.refusals = {{"memory_per_user", 3}, {"connections", 0}};
  st.pool_bytes = 8 << 20;
  st.pool_segments = 2;
  st.pool_max_bytes = 1 << 30;
  st.pool_reused = 7;
  st.pool_released_bytes = 4 << 20;
  st.limits = {.max_memory_per_user = 1 << 30,
               .max_segments_per_user = 100000,
               .max_connections = 4096,
               .max_connections_per_user = 256,
               .max_attachments_per_connection = 65536,
               .handshake_timeout = 10s,
               .fd_limit = 524288,
               .fd_reserve = 26214};
  return st;
}

// The exposition's samples by "name{labels}", and its HELP and TYPE lines by family name.
struct Exposition {
  std::map<std::string, std::string> samples;
  std::map<std::string, std::string> help, type;
  std::vector<std::string> bad_lines;
};

Exposition ParseExposition(const std::string& text) {
  static const std::regex sample(
      R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? (-?[0-9]+(\.[0-9]+)?))");
  static const std::regex comment(R"(# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+))");
  Exposition e;
  std::istringstream in(text);
  std::string current;  // The family whose TYPE came last.
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_match(line, m, comment)) {
      (m[1] == "HELP" ? e.help : e.type)[m[2]] = m[3];
      if (m[1] == "TYPE") current = m[2];
    } else if (std::regex_match(line, m, sample) && m[1] == current) {
      e.samples[m[1].str() + m[2].str()] = m[5];
    } else {
      e.bad_lines.push_back(line);
    }
  }
  return e;
}

TEST(ShmctlRender, PrometheusHasEveryFigure) {
  Exposition e = ParseExposition(StatsPrometheus(SampleStats(), Ctx()));
  EXPECT_TRUE(e.bad_lines.empty()) << e.bad_lines.front();
  std::map<std::string, std::string> want = {
      {"shmbroker_info{version=\"0.1.0\",pid=\"4242\",socket=\"/run/shmbroker/shmbroker.sock\"}",
       "1"},
      {"shmbroker_start_time_seconds", "1799999975.000"},
      {"shmbroker_uptime_seconds", "25.000"},
      {"shmbroker_segments", "3"},
      {"shmbroker_bytes_held", "10000"},
      {"shmbroker_unlinked_segments", "1"},
      {"shmbroker_unlinked_bytes", "4096"},
      {"shmbroker_shared_regions", "1"},
      {"shmbroker_shared_region_resident_bytes", "67108864"},
      {"shmbroker_shared_region_free_bytes", "1048576"},
      {"shmbroker_huge_page_bytes", "2097152"},
      {"shmbroker_auto_unlinked_total{cause=\"connection\"}", "0"},
      {"shmbroker_auto_unlinked_total{cause=\"refcount\"}", "7"},
      {"shmbroker_auto_unlinked_total{cause=\"ttl\"}", "0"},
      {"shmbroker_tickets_in_flight", "2"},
      {"shmbroker_tickets_lapsed_total", "1"},
      {"shmbroker_waiters", "4"},
      {"shmbroker_refusals_total{limit=\"connections\"}", "0"},
      {"shmbroker_refusals_total{limit=\"memory_per_user\"}", "3"},
      {"shmbroker_pool_bytes", "8388608"},
      {"shmbroker_pool_segments", "2"},
      {"shmbroker_pool_max_bytes", "1073741824"},
      {"shmbroker_pool_reused_total", "7"},
      {"shmbroker_pool_released_bytes_total", "4194304"},
      {"shmbroker_clients", "2"},
      {"shmbroker_requests_total{op=\"create\"}", "3"},
      {"shmbroker_requests_total{op=\"list\"}", "0"},
      {"shmbroker_errors_total{code=\"NOT_FOUND\"}", "1"},
      {"shmbroker_errors_total{code=\"RESOURCE_EXHAUSTED\"}", "2"},
      {"shmbroker_log_lines_dropped_total", "5"},
      {"shmbroker_max_memory_bytes", "8589934592"},
      {"shmbroker_max_memory_per_user_bytes", "1073741824"},
      {"shmbroker_max_segments_per_user", "100000"},
      {"shmbroker_max_connections", "4096"},
      {"shmbroker_max_connections_per_user", "256"},
      {"shmbroker_max_attachments_per_connection", "65536"},
      {"shmbroker_handshake_timeout_seconds", "10.000"},
      {"shmbroker_fd_limit", "524288"},
      {"shmbroker_fd_reserve", "26214"},
  };
  EXPECT_EQ(e.samples, want);
}

TEST(ShmctlRender, PrometheusFamiliesHaveHelpTypeAndConventionalNames) {
  std::string text = StatsPrometheus(SampleStats(), Ctx());
  Exposition e = ParseExposition(text);
  std::set<std::string> families;
  for (const auto& [key, value] : e.samples) families.insert(key.substr(0, key.find('{')));
  for (const auto& f : families) {
    EXPECT_EQ(f.rfind("shmbroker_", 0), 0u) << f;
    EXPECT_FALSE(e.help[f].empty()) << f;
    ASSERT_TRUE(e.type.count(f)) << f;
    bool total = f.size() > 6 && f.compare(f.size() - 6, 6, "_total") == 0;
    EXPECT_EQ(e.type[f], total ? "counter" : "gauge") << f;
  }
  EXPECT_EQ(e.type.size(), families.size()) << "a TYPE without samples";
  // Each family once, its samples right after its TYPE line (ParseExposition checks the
  // order); the document ends with a newline.
  EXPECT_EQ(text.back(), '\n');
  std::size_t types = 0;
  for (std::size_t p = 0; (p = text.find("# TYPE ", p)) != std::string::npos; ++p) ++types;
  EXPECT_EQ(types, families.size());
}

TEST(ShmctlRender, PrometheusEscapesLabelValues) {
  DaemonStats st = SampleStats();
  st.socket_path = "/tmp/a \"b\"\\c\nd.sock";
  st.requests = {{"odd\"op", 1}};
  std::string text = StatsPrometheus(st, Ctx());
  EXPECT_NE(text.find(R"(socket="/tmp/a \"b\"\\c\nd.sock"})"), std::string::npos) << text;
  EXPECT_NE(text.find("shmbroker_requests_total{op=\"odd\\\"op\"} 1\n"), std::string::npos) << text;
  EXPECT_TRUE(ParseExposition(text).bad_lines.empty());
}

TEST(ShmctlRender, CachingUserNamerLooksUpEachUidOnce) {
  int lookups = 0;
  UserNamer name = CachingUserNamer([&](std::uint32_t uid) {
    ++lookups;
    return "user" + std::to_string(uid);
  });
  std::vector<SegmentInfo> many(1000, Seg("a", 8));
  for (std::size_t i = 0; i < many.size(); ++i) many[i].uid = i % 2 == 0 ? 0 : 1000;
  std::string out = ListText(many, false, {.now = kNow, .user_name = name});
  EXPECT_EQ(lookups, 2);
  EXPECT_NE(out.find("user1000"), std::string::npos);
  EXPECT_EQ(name(0), "user0");
  EXPECT_EQ(name(7), "user7");
  EXPECT_EQ(lookups, 3);
}

}  // namespace
}  // namespace shmbroker::shmctl
