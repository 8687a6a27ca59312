// shmctl against the real daemon: output (text and JSON parsed back), purge selectors, exit codes.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <shmbroker/client.h>
#include <chrono>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_daemon.h"

namespace shmbroker {
namespace {

using namespace std::chrono_literals;

struct Ran {
  int code = -1;
  std::string out, err;
};

std::string ReadAll(int fd) {
  std::string s;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) s.append(buf, static_cast<std::size_t>(n));
  return s;
}

// Runs `argv` with `input` on stdin, optionally as another uid; captures stdout and stderr.
Ran Exec(std::vector<std::string> argv, const std::string& input = "", int uid = -1) {
  int out[2], err[2], in[2];
  if (::pipe2(out, O_CLOEXEC) || ::pipe2(err, O_CLOEXEC) || ::pipe2(in, O_CLOEXEC)) return {};
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    if (uid >= 0 && (::setgroups(0, nullptr) != 0 || ::setgid(uid) != 0 || ::setuid(uid) != 0)) {
      ::_exit(125);
    }
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(out[1]);
  ::close(err[1]);
  ::close(in[0]);
  if (!input.empty()) (void)!::write(in[1], input.data(), input.size());
  ::close(in[1]);
  Ran r;
  std::thread t([&] { r.err = ReadAll(err[0]); });
  r.out = ReadAll(out[0]);
  t.join();
  ::close(out[0]);
  ::close(err[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// Runs `argv` on a pseudo-terminal with exactly `env`; returns what it printed there.
Ran ExecOnTerminal(std::vector<std::string> argv, std::vector<std::string> env) {
  int master = -1;
  pid_t pid = ::forkpty(&master, nullptr, nullptr, nullptr);
  if (pid == 0) {
    std::vector<char*> args, envp;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  Ran r;
  char buf[4096];
  for (;;) {
    pollfd p{master, POLLIN, 0};
    if (::poll(&p, 1, 10000) <= 0) break;
    ssize_t n = ::read(master, buf, sizeof(buf));
    if (n <= 0) break;  // EIO once the child has exited and closed its side.
    r.out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(master);
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// Evaluates a Python expression over the JSON document `doc` (bound to `d`): the JSON is parsed
// by a real parser, not by string matching.
std::string Py(const std::string& doc, const std::string& expr) {
  Ran r = Exec(
      {"/usr/bin/python3", "-c", "import json,sys; d=json.load(sys.stdin); print((" + expr + "))"},
      doc);
  EXPECT_EQ(r.code, 0) << r.err << "\n" << doc;
  while (!r.out.empty() && r.out.back() == '\n') r.out.pop_back();
  return r.out;
}

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

class ShmctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    client_.emplace(d_.MustConnect());
    socket_ = d_.socket();
    dir_ = d_.dir();
    daemon_ = d_.pid();
  }
  void TearDown() override { client_.reset(); }

  Ran Ctl(std::vector<std::string> args, int uid = -1) {
    args.insert(args.begin(), {SHMCTL_PATH, "--socket", socket_});
    return Exec(args, "", uid);
  }

  Segment Make(const std::string& name, std::vector<std::uint64_t> shape = {16},
               std::string dtype = "<f8", std::uint32_t mode = 0600,
               std::map<std::string, std::string> attrs = {}) {
    auto s = client_->Create(
        {.name = name, .dtype = dtype, .shape = shape, .mode = mode, .attrs = attrs});
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(s).value() : Segment();
  }

  // A segment whose creator process was killed with SIGKILL: an orphan.
  void MakeOrphan(const std::string& name) {
    testing::HoldingChild creator([&](auto ready) {
      auto c = Client::Connect({.socket_path = socket_});
      if (!c.ok()) return 2;
      auto s = c->Create({.name = name, .shape = {4096}});
      if (!s.ok()) return 3;
      ready();
      return 0;
    });
    ASSERT_TRUE(creator.ready());
    ASSERT_TRUE(creator.Kill());
    // The daemon notices the hang-up asynchronously.
    for (int i = 0; i < 500; ++i) {
      auto st = client_->Stat(name);
      if (st.ok() && !st->creator_connected && st->attachments == 0) return;
      std::this_thread::sleep_for(10ms);
    }
    FAIL() << "creator of " << name << " still counted as connected";
  }

  testing::TestDaemon d_;
  std::string dir_, socket_;
  pid_t daemon_ = -1;
  std::optional<Client> client_;
};

TEST_F(ShmctlTest, EmptyBrokerPrintsOnlyTheHeader) {
  Ran r = Ctl({"list"});
  EXPECT_EQ(r.code, 0) << r.err;
  auto lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 1u) << r.out;
  EXPECT_EQ(lines[0].rfind("NAME", 0), 0u);
  for (const char* col : {"DTYPE", "SHAPE", "SIZE", "OWNER", "MODE", "ATTACHED", "AGE"}) {
    EXPECT_NE(lines[0].find(col), std::string::npos) << col;
  }
  EXPECT_EQ(r.out.find('\033'), std::string::npos) << "colored output into a pipe";
  Ran j = Ctl({"list", "--json"});
  EXPECT_EQ(j.code, 0);
  EXPECT_EQ(Py(j.out, "len(d['segments'])"), "0");
}

TEST_F(ShmctlTest, ListTextSortedFilteredAndLong) {
  Segment b = Make("job7/weights", {1024, 256}, "<f4", 0640, {{"units", "m"}});
  Segment a = Make("job7/bias", {256});
  Segment c = Make("other", {3}, "|u1");
  Ran r = Ctl({"list"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 4u) << r.out;
  EXPECT_EQ(lines[1].rfind("job7/bias ", 0), 0u);
  EXPECT_EQ(lines[2].rfind("job7/weights ", 0), 0u);
  EXPECT_EQ(lines[3].rfind("other ", 0), 0u);
  EXPECT_NE(lines[2].find("(1024, 256)"), std::string::npos) << lines[2];
  EXPECT_NE(lines[2].find("1.0 MiB"), std::string::npos) << lines[2];
  EXPECT_NE(lines[2].find("0640"), std::string::npos);
  EXPECT_NE(lines[2].find("root"), std::string::npos);
  EXPECT_NE(lines[3].find("3 B"), std::string::npos);
  for (const auto& l : lines) EXPECT_LE(l.size(), 100u) << l;

  Ran f = Ctl({"list", "job7/*"});
  EXPECT_EQ(Lines(f.out).size(), 3u) << f.out;
  Ran two = Ctl({"list", "other", "job7/b*"});
  EXPECT_EQ(Lines(two.out).size(), 3u) << two.out;

  Ran l = Ctl({"list", "--long"});
  auto long_lines = Lines(l.out);
  ASSERT_EQ(long_lines.size(), 4u);
  for (const char* col : {"PID", "CREATED", "ATTRS"}) {
    EXPECT_NE(long_lines[0].find(col), std::string::npos) << col;
  }
  EXPECT_NE(long_lines[2].find("units=m"), std::string::npos) << long_lines[2];
  EXPECT_NE(long_lines[2].find(std::to_string(::getpid())), std::string::npos);
  EXPECT_NE(long_lines[2].find("T"), std::string::npos);
}

TEST_F(ShmctlTest, ListAndInfoJsonParseBack) {
  Segment w = Make("job7/weights", {3, 4}, "<f4", 0640, {{"units", "m/s"}, {"q", "a\"b"}});
  Ran r = Ctl({"list", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Py(r.out, "len(d['segments'])"), "1");
  EXPECT_EQ(Py(r.out, "d['segments'][0]['name']"), "job7/weights");
  EXPECT_EQ(Py(r.out, "d['segments'][0]['shape']"), "[3, 4]");
  EXPECT_EQ(Py(r.out, "d['segments'][0]['nbytes']"), "48");
  EXPECT_EQ(Py(r.out, "d['segments'][0]['dtype']"), "<f4");
  EXPECT_EQ(Py(r.out, "d['segments'][0]['order']"), "C");
  EXPECT_EQ(Py(r.out, "d['segments'][0]['mode']"), "0640");
  EXPECT_EQ(Py(r.out, "d['segments'][0]['owner']"), "root");
  EXPECT_EQ(Py(r.out, "d['segments'][0]['uid']"), std::to_string(::geteuid()));
  EXPECT_EQ(Py(r.out, "d['segments'][0]['attachments']"), "1");
  EXPECT_EQ(Py(r.out, "d['segments'][0]['creator_pid']"), std::to_string(::getpid()));
  EXPECT_EQ(Py(r.out, "d['segments'][0]['attrs']['q']"), "a\"b");
  EXPECT_EQ(Py(r.out, "0 <= d['segments'][0]['age_seconds'] < 60"), "True");
  // The two forms of the creation time agree to the millisecond.
  EXPECT_EQ(Py(r.out,
               "round(__import__('datetime').datetime.fromisoformat("
               "d['segments'][0]['created'].replace('Z','+00:00')).timestamp(), 3)"
               " == d['segments'][0]['created_unix']"),
            "True");

  Ran i = Ctl({"info", "job7/weights", "--json"});
  ASSERT_EQ(i.code, 0) << i.err;
  EXPECT_EQ(Py(i.out, "d['name'], d['nbytes'], d['attrs']['units']"),
            "('job7/weights', 48, 'm/s')");
  Ran t = Ctl({"info", "job7/weights"});
  ASSERT_EQ(t.code, 0);
  EXPECT_NE(t.out.find("48 bytes"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("m/s"), std::string::npos) << t.out;
  Ran missing = Ctl({"info", "nope"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("NOT_FOUND"), std::string::npos) << missing.err;
}

TEST_F(ShmctlTest, UnlinkReportsEachFailure) {
  { Segment a = Make("a"); }
  Ran r = Ctl({"unlink", "a", "missing", "bad name"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("unlinked a"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("'missing': NOT_FOUND"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("INVALID_ARGUMENT"), std::string::npos) << r.err;
  EXPECT_EQ(client_->Stat("a").status().code(), Code::kNotFound);
  { Segment b = Make("b"); }
  EXPECT_EQ(Ctl({"unlink", "b"}).code, 0);
}

TEST_F(ShmctlTest, PurgeRefusesWithoutSelector) {
  { Segment a = Make("a"); }
  Ran r = Ctl({"purge"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("selector"), std::string::npos) << r.err;
  Ran dry = Ctl({"purge", "--dry-run"});
  EXPECT_EQ(dry.code, 2);
  EXPECT_TRUE(client_->Stat("a").ok());
}

TEST_F(ShmctlTest, PurgeEachSelector) {
  MakeOrphan("orphan/1");
  MakeOrphan("orphan/2");
  Segment held = Make("held/1");      // Attached by us.
  { Segment idle = Make("idle/1"); }  // Unattached, but its creator (we) is connected.

  Ran dry = Ctl({"purge", "--orphans", "--dry-run"});
  ASSERT_EQ(dry.code, 0) << dry.err;
  EXPECT_NE(dry.out.find("would remove orphan/1"), std::string::npos) << dry.out;
  EXPECT_NE(dry.out.find("would remove 2 segments"), std::string::npos) << dry.out;
  EXPECT_EQ(client_->List()->size(), 4u);

  EXPECT_EQ(Ctl({"purge", "--older-than", "1h"}).out.find("removed 0 segments"), 0u);
  for (const char* duration : {"soon", "5"}) {  // A bare number: seconds? minutes? Refused.
    Ran bad = Ctl({"purge", "--older-than", duration});
    EXPECT_EQ(bad.code, 2) << duration;
    EXPECT_NE(bad.err.find(duration), std::string::npos) << bad.err;
  }
  EXPECT_EQ(client_->List()->size(), 4u);

  Ran o = Ctl({"purge", "--orphans", "--json"});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(Py(o.out, "sorted(x['name'] for x in d['removed'])"), "['orphan/1', 'orphan/2']");
  EXPECT_EQ(Py(o.out, "d['removed_count'], d['bytes_freed'], d['dry_run']"), "(2, 8192, False)");
  EXPECT_EQ(client_->List()->size(), 2u);

  Ran u = Ctl({"purge", "--unattached"});
  ASSERT_EQ(u.code, 0) << u.err;
  EXPECT_NE(u.out.find("removed idle/1"), std::string::npos) << u.out;
  EXPECT_TRUE(client_->Stat("held/1").ok());

  { Segment x = Make("x/1"); }
  { Segment y = Make("y/1"); }
  Ran p = Ctl({"purge", "x/*", "--owner", "root"});
  EXPECT_NE(p.out.find("removed 1 segment,"), std::string::npos) << p.out;
  EXPECT_EQ(client_->Stat("x/1").status().code(), Code::kNotFound);
  EXPECT_EQ(Ctl({"purge", "--owner", "no-such-user-here"}).code, 2);
  Ran old = Ctl({"purge", "--older-than", "0s", "y/*"});
  EXPECT_NE(old.out.find("removed y/1"), std::string::npos) << old.out;

  Ran all = Ctl({"purge", "--all"});
  EXPECT_EQ(all.code, 0);
  EXPECT_TRUE(client_->List()->empty());
}

TEST_F(ShmctlTest, OtherUsersAreDeniedAndSkipped) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run shmctl as another uid";
  { Segment a = Make("root/a", {16}, "<f8", 0644); }
  Ran r = Ctl({"unlink", "root/a"}, 65534);
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("PERMISSION_DENIED"), std::string::npos) << r.err;
  EXPECT_TRUE(client_->Stat("root/a").ok());

  Ran p = Ctl({"purge", "--all"}, 65534);
  EXPECT_EQ(p.code, 0) << p.err;
  EXPECT_NE(p.out.find("removed 0 segments"), std::string::npos) << p.out;
  EXPECT_NE(p.out.find("skipped 1 matching segment owned by other users"), std::string::npos)
      << p.out;
  EXPECT_TRUE(client_->Stat("root/a").ok());
  Ran list = Ctl({"list"}, 65534);  // Anyone may look.
  EXPECT_EQ(list.code, 0);
  EXPECT_EQ(Lines(list.out).size(), 2u);
}

TEST_F(ShmctlTest, StatsTextAndJson) {
  Segment a = Make("a", {1000}, "|u1");
  Ran j = Ctl({"stats", "--json"});
  ASSERT_EQ(j.code, 0) << j.err;
  EXPECT_EQ(Py(j.out, "d['segments'], d['bytes_held'], d['max_memory']"), "(1, 1000, 0)");
  EXPECT_EQ(Py(j.out, "d['socket']"), socket_);
  EXPECT_EQ(Py(j.out, "d['pid']"), std::to_string(daemon_));
  EXPECT_EQ(Py(j.out, "d['clients'] >= 2"), "True");  // Us and shmctl itself.
  EXPECT_EQ(Py(j.out, "d['requests']['create']"), "1");
  EXPECT_EQ(Py(j.out, "sorted(d['errors'])[0]"), "ALREADY_EXISTS");
  EXPECT_EQ(Py(j.out, "d['uptime_seconds'] >= 0"), "True");
  // Every limit with its value, as the Security model section lists them.
  EXPECT_EQ(
      Py(j.out, "d['limits']['max_segments_per_user'], d['limits']['max_connections_per_user']"),
      "(100000, 256)");
  EXPECT_EQ(Py(j.out, "d['limits']['handshake_timeout_ms'], d['limits']['fd_limit'] > 0"),
            "(10000, True)");
  EXPECT_EQ(Py(j.out, "d['unlinked_segments'], d['unlinked_bytes'], d['log_lines_dropped']"),
            "(0, 0, 0)");
  // The 1000-byte segment is a block of a shared region.
  EXPECT_EQ(Py(j.out, "d['shared_regions'], d['shared_region_resident_bytes'] >= 1024"),
            "(1, True)");
  Ran t = Ctl({"stats"});
  ASSERT_EQ(t.code, 0);
  EXPECT_NE(t.out.find("segments:"), std::string::npos);
  EXPECT_NE(t.out.find("1000 B held"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("100000 segments, 256 of"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("0 segments (0 B) still in use"), std::string::npos) << t.out;
}

TEST_F(ShmctlTest, StatsPrometheusCountsWhatHappened) {
  Segment small = Make("p/small", {1000}, "|u1");
  Segment large = Make("p/large", {3 << 20}, "|u1");  // A region of its own.
  { Segment gone = Make("p/gone", {8}, "|u1"); }
  ASSERT_TRUE(client_->Unlink("p/gone").ok());
  ASSERT_TRUE(client_->Unlink("p/large").ok());  // Still attached: unlinked but in use.
  EXPECT_EQ(client_->Stat("p/missing").status().code(), Code::kNotFound);
  Ran r = Ctl({"stats", "--prometheus"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");

  // Every line is a HELP, a TYPE or a sample `name{labels} value` of the family typed last.
  static const std::regex sample(
      R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? (-?[0-9]+(\.[0-9]+)?))");
  static const std::regex comment(R"(# (HELP|TYPE) (shmbroker_[a-z0-9_]+) (.+))");
  std::map<std::string, std::string> value, type;
  std::set<std::string> help, sampled;
  std::string typed_last;
  for (const std::string& line : Lines(r.out)) {
    std::smatch m;
    if (std::regex_match(line, m, comment)) {
      if (m[1] == "HELP") {
        help.insert(m[2]);
      } else {
        type[m[2]] = m[3];
        typed_last = m[2];
      }
    } else {
      ASSERT_TRUE(std::regex_match(line, m, sample)) << line;
      EXPECT_EQ(m[1], typed_last) << line;
      sampled.insert(m[1]);
      value[m[1].str() + m[2].str()] = m[5];
    }
  }
  for (const auto& name : sampled) {
    EXPECT_TRUE(help.count(name)) << name << " has no HELP";
    EXPECT_TRUE(type[name] == "gauge" || type[name] == "counter") << name;
  }
  EXPECT_EQ(help.size(), sampled.size());

  EXPECT_EQ(value["shmbroker_segments"], "1");
  EXPECT_EQ(value["shmbroker_bytes_held"], std::to_string(1000 + (3 << 20)));
  EXPECT_EQ(value["shmbroker_unlinked_segments"], "1");
  EXPECT_EQ(value["shmbroker_unlinked_bytes"], std::to_string(3 << 20));
  EXPECT_GE(std::stoi(value["shmbroker_clients"]), 2);  // Us and shmctl itself.
  EXPECT_EQ(type["shmbroker_requests_total"], "counter");
  EXPECT_EQ(value["shmbroker_requests_total{op=\"create\"}"], "3");
  EXPECT_EQ(value["shmbroker_requests_total{op=\"unlink\"}"], "2");
  EXPECT_EQ(value["shmbroker_requests_total{op=\"stat\"}"], "1");
  EXPECT_EQ(type["shmbroker_errors_total"], "counter");
  EXPECT_EQ(value["shmbroker_errors_total{code=\"NOT_FOUND\"}"], "1");
  EXPECT_EQ(value["shmbroker_errors_total{code=\"RESOURCE_EXHAUSTED\"}"], "0");
  std::string info = "shmbroker_info{version=\"" SHMBROKER_VERSION "\",pid=\"" +
                     std::to_string(daemon_) + "\",socket=\"" + socket_ + "\"}";
  EXPECT_EQ(value[info], "1") << r.out;
  EXPECT_GE(std::stod(value["shmbroker_uptime_seconds"]), 0.0);

  // The figures that do not move between two requests agree with --json's.
  Ran j = Ctl({"stats", "--json"});
  ASSERT_EQ(j.code, 0) << j.err;
  for (const char* key :
       {"segments", "bytes_held", "unlinked_segments", "unlinked_bytes", "shared_regions",
        "shared_region_resident_bytes", "shared_region_free_bytes", "huge_page_bytes",
        "log_lines_dropped", "pool_bytes", "pool_segments", "pool_max_bytes", "pool_reused",
        "pool_released_bytes"}) {
    std::string name = std::string("shmbroker_") + key;
    if (!value.count(name)) name += "_total";
    EXPECT_EQ(value[name], Py(j.out, std::string("d['") + key + "']")) << key;
  }
  for (const char* key : {"max_memory", "max_memory_per_user"}) {
    EXPECT_EQ(value[std::string("shmbroker_") + key + "_bytes"],
              Py(j.out, std::string("d['limits']['") + key + "']"))
        << key;
  }
  for (const char* key : {"max_segments_per_user", "max_connections", "max_connections_per_user",
                          "max_attachments_per_connection", "fd_limit", "fd_reserve"}) {
    EXPECT_EQ(value[std::string("shmbroker_") + key],
              Py(j.out, std::string("d['limits']['") + key + "']"))
        << key;
  }
  EXPECT_EQ(value["shmbroker_handshake_timeout_seconds"],
            Py(j.out, "'%.3f' % (d['limits']['handshake_timeout_ms'] / 1000)"));
}

TEST_F(ShmctlTest, StatsPrometheusAndJsonTogetherIsAUsageError) {
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"stats", "--prometheus", "--json"}, {"stats", "--json", "--prometheus"}}) {
    Ran r = Ctl(args);
    EXPECT_EQ(r.code, 2);
    EXPECT_EQ(r.out, "");
    EXPECT_NE(r.err.find("--json and --prometheus cannot be used together"), std::string::npos)
        << r.err;
  }
  Ran list = Ctl({"list", "--prometheus"});
  EXPECT_EQ(list.code, 2);
  EXPECT_NE(list.err.find("'--prometheus' for 'list'"), std::string::npos) << list.err;
}

TEST_F(ShmctlTest, ListUnlinkedShowsWhoStillHoldsMemory) {
  Segment held = Make("gone", {1024}, "|u1");
  Segment other = Make("kept", {8}, "|u1");
  ASSERT_TRUE(client_->Unlink("gone").ok());
  Ran t = Ctl({"list", "--unlinked"});
  ASSERT_EQ(t.code, 0) << t.err;
  EXPECT_NE(t.out.find("HELD BY"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("gone"), std::string::npos) << t.out;
  EXPECT_EQ(t.out.find("kept"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("pid " + std::to_string(::getpid()) + " 'test' (1)"), std::string::npos)
      << t.out;
  Ran j = Ctl({"list", "--unlinked", "--json"});
  ASSERT_EQ(j.code, 0) << j.err;
  EXPECT_EQ(Py(j.out,
               "[(s['name'], s['nbytes'], [h['pid'] for h in s['holders']]) "
               "for s in d['unlinked']]"),
            "[('gone', 1024, [" + std::to_string(::getpid()) + "])]");
  held = Segment();
  ASSERT_TRUE(client_->Stats().ok());  // Carries our queued release.
  Ran after = Ctl({"list", "--unlinked", "--json"});
  EXPECT_EQ(Py(after.out, "d['unlinked']"), "[]");
}

TEST_F(ShmctlTest, UnknownCommandsAndOptionsAreNamed) {
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"lsit"}, {"--bogus"}, {"list", "--bogus"}, {"info", "a", "b"}}) {
    Ran r = Ctl(args);
    EXPECT_EQ(r.code, 2) << args.back();
    EXPECT_NE(r.err.find("'" + args.back() + "'"), std::string::npos) << r.err;
  }
  EXPECT_NE(Ctl({}).err.find("command is required"), std::string::npos);
}

TEST_F(ShmctlTest, GlobalOptionsAfterTheSubcommandAndNoEmptySocket) {
  auto seg = Make("g/one");
  Ran r = Exec({SHMCTL_PATH, "list", "--socket", socket_, "-q"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "g/one\n");
  // An empty path is a mistake, not a request for the default path.
  for (std::vector<std::string> args :
       std::vector<std::vector<std::string>>{{SHMCTL_PATH, "--socket", "", "list"},
                                             {SHMCTL_PATH, "--socket=", "list"},
                                             {SHMCTL_PATH, "list", "--socket", ""}}) {
    Ran e = Exec(args);
    EXPECT_EQ(e.code, 2) << e.err;
    EXPECT_NE(e.err.find("empty"), std::string::npos) << e.err;
  }
}

TEST_F(ShmctlTest, ListQuietPrintsNamesOnly) {
  auto a = Make("q/a"), b = Make("q/b");
  Ran r = Ctl({"list", "-q", "q/*"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "q/a\nq/b\n");
}

TEST_F(ShmctlTest, OnATerminalBoldHeaderAndTotalsUnlessNoColorOrDumb) {
  auto a = Make("t/a", {1024}, "|u1"), b = Make("t/b", {2048}, "|u1");
  std::vector<std::string> argv = {SHMCTL_PATH, "--socket", socket_, "list"};
  Ran color = ExecOnTerminal(argv, {"TERM=xterm"});
  EXPECT_EQ(color.code, 0);
  EXPECT_NE(color.out.find("\033[1mNAME"), std::string::npos) << color.out;
  EXPECT_NE(color.out.find("2 segments, 3.0 KiB"), std::string::npos) << color.out;
  for (auto env : {std::vector<std::string>{"TERM=xterm", "NO_COLOR=1"},
                   std::vector<std::string>{"TERM=dumb"}}) {
    Ran plain = ExecOnTerminal(argv, env);
    EXPECT_EQ(plain.out.find('\033'), std::string::npos) << env.back() << ": " << plain.out;
    EXPECT_NE(plain.out.find("2 segments, 3.0 KiB"), std::string::npos) << plain.out;
  }
  // Not a terminal: the table alone.
  Ran piped = Ctl({"list"});
  EXPECT_EQ(piped.out.find("segments,"), std::string::npos) << piped.out;
}

TEST_F(ShmctlTest, InfoShowsWhichProcessesHoldTheSegment) {
  auto seg = Make("h/held");
  Ran idle = Ctl({"info", "h/other-missing"});
  EXPECT_EQ(idle.code, 1);
  auto holder = d_.MustConnect("holder-name");
  auto att = holder.Attach("h/held");
  ASSERT_TRUE(att.ok());
  Ran r = Ctl({"info", "h/held"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string pid = std::to_string(::getpid());
  EXPECT_NE(r.out.find("held by:   pid " + pid + ", "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("'holder-name': 1 attachment\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("'test': 1 attachment (1 read-write)"), std::string::npos) << r.out;
  Ran j = Ctl({"info", "--json", "h/held"});
  EXPECT_EQ(Py(j.out,
               "sorted((h['client'], h['pid'], h['attachments'], h['writable']) "
               "for h in d['holders'])"),
            "[('holder-name', " + pid + ", 1, 0), ('test', " + pid + ", 1, 1)]");
  auto st = client_->Stat("h/held");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->holders.size(), 2u);
}

TEST_F(ShmctlTest, InfoAndUnlinkGivenAGlobPointToPurge) {
  auto seg = Make("glob/a");
  for (std::vector<std::string> args :
       std::vector<std::vector<std::string>>{{"info", "glob/*"}, {"unlink", "glob/*"}}) {
    Ran r = Ctl(args);
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("shmctl purge glob/*"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("shmctl list glob/*"), std::string::npos) << r.err;
  }
  EXPECT_TRUE(client_->Stat("glob/a").ok()) << "nothing was unlinked";
}

TEST_F(ShmctlTest, ExitCodesForUsageHelpAndUnreachableDaemon) {
  EXPECT_EQ(Ctl({"bogus"}).code, 2);
  EXPECT_EQ(Ctl({}).code, 2);
  EXPECT_EQ(Ctl({"info"}).code, 2);
  for (const char* sub : {"list", "info", "unlink", "purge", "stats"}) {
    Ran h = Ctl({sub, "--help"});
    EXPECT_EQ(h.code, 0) << sub;
    EXPECT_NE(h.out.find("Usage"), std::string::npos) << sub;
  }
  Ran v = Exec({SHMCTL_PATH, "--version"});
  EXPECT_EQ(v.code, 0);
  EXPECT_NE(v.out.find(SHMBROKER_VERSION), std::string::npos);
  std::string nowhere = dir_ + "/nothing-here.sock";
  Ran u = Exec({SHMCTL_PATH, "--socket", nowhere, "list"});
  EXPECT_EQ(u.code, 3);
  EXPECT_NE(u.err.find(nowhere), std::string::npos) << u.err;
}

TEST(ShmctlTrust, RefusesADaemonRunByAnotherUserWithExitCode3) {
  testing::TestDaemon other(testing::DaemonOptions{.uid = testing::kNobody});
  Ran r = Exec({SHMCTL_PATH, "--socket", other.socket(), "list"});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_NE(r.err.find(other.socket()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("65534 (nobody)"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  ::setenv("SHMBROKER_TRUST_UID", "65534", 1);
  Ran trusted = Exec({SHMCTL_PATH, "--socket", other.socket(), "list"});
  ::unsetenv("SHMBROKER_TRUST_UID");
  EXPECT_EQ(trusted.code, 0) << trusted.err;
}

}  // namespace
}  // namespace shmbroker
