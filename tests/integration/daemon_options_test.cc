// shmbrokerd's command line: --config, --max-memory parsing, --version/--help, logging, and the
// file-descriptor limit it raises at start.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <shmbroker/client.h>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_daemon.h"

namespace shmbroker::testing {
namespace {

using namespace std::chrono_literals;

// A daemon with exactly these arguments, not waited for (it may be meant to exit).
DaemonOptions Only(std::vector<std::string> args) {
  return {.args = std::move(args), .only_args = true, .wait_until_serving = false};
}

TEST(DaemonOptions, ConfigFileSetsSocketMaxMemoryAndLogLevel) {
  char tmpl[] = "/tmp/shmbrokerd-conf-XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string socket = dir + "/from-config.sock";
  std::string conf = dir + "/shmbrokerd.toml";
  std::ofstream(conf) << "socket = \"" << socket
                      << "\"\nmax-memory = \"1M\"\nlog-level = \"debug\"\n";
  TestDaemon d(Only({"--config", conf}));
  auto c = d.ConnectWithin(socket);
  ASSERT_TRUE(c.ok()) << c.status().ToString() << "\n" << d.log();
  EXPECT_EQ(c->server().max_memory, 1u << 20);
  auto over = c->Create({.name = "big", .shape = {(1u << 20) + 1}});
  EXPECT_EQ(over.status().code(), Code::kResourceExhausted);
  ASSERT_TRUE(c->Create({.name = "fits", .shape = {1u << 20}}).ok());
  c = Status::Unavailable("closed");  // Disconnect before stopping.
  EXPECT_EQ(d.Terminate(), 0);
  std::string log = d.log();
  EXPECT_NE(log.find("debug"), std::string::npos) << "log-level from the config file ignored";
  EXPECT_FALSE(std::filesystem::exists(socket)) << "socket not removed at exit";
  std::filesystem::remove_all(dir);
}

TEST(DaemonOptions, InfoLogHasConnectsCreatesAndUnlinks) {
  const std::string path = ScratchSocket("shmbrokerd-log-test");
  TestDaemon d(Only({"--socket", path}));
  {
    auto c = d.ConnectWithin(path);
    ASSERT_TRUE(c.ok()) << d.log();
    ASSERT_TRUE(c->Create({.name = "logged/one", .shape = {1048575}, .mode = 0640}).ok());
    ASSERT_TRUE(c->Unlink("logged/one").ok());
    for (int i = 0; i < 300; ++i) {
      ASSERT_TRUE(c->Create({.name = "logged/p" + std::to_string(i), .shape = {1024}}).ok());
    }
    ASSERT_TRUE(c->Create({.name = "logged/kept", .shape = {2048}}).ok());
    ASSERT_TRUE(c->Purge({.patterns = {"logged/p*"}}).ok());
  }
  // The disconnect is logged once the daemon has seen the hang-up: a stats round trip from a
  // second client orders it after the first one's close on the single event loop.
  auto c2 = d.ConnectWithin(path);
  ASSERT_TRUE(c2.ok());
  ASSERT_TRUE(c2->Stats().ok());
  c2 = Status::Unavailable("closed");
  EXPECT_EQ(d.Terminate(), 0);
  std::string log = d.log();
  auto count = [&](const std::string& what) {
    std::size_t n = 0;
    for (auto pos = log.find(what); pos != std::string::npos; pos = log.find(what, pos + 1)) ++n;
    return n;
  };
  // One line per client connect and per disconnect: two clients here.
  EXPECT_EQ(count("connected: 'test'"), 2u) << log;
  EXPECT_EQ(count(" disconnected ('test'"), 2u) << log;
  // Sizes and modes as shmctl shows them.
  EXPECT_NE(log.find("created 'logged/one' |u1 1.0 MiB mode 0640 by uid"), std::string::npos)
      << log;
  EXPECT_NE(log.find("unlinked 'logged/one'"), std::string::npos) << log;
  EXPECT_NE(log.find("disconnected"), std::string::npos) << log;
  EXPECT_EQ(log.find(" debug "), std::string::npos) << "debug lines at the default level";
  // A purge is one line, whatever it removes.
  EXPECT_EQ(count("purged"), 1u) << log;
  EXPECT_NE(log.find("purged 300 segments (300.0 KiB) by uid"), std::string::npos) << log;
  EXPECT_NE(log.find("received SIGTERM"), std::string::npos) << log;
  // What stopping throws away.
  EXPECT_NE(log.find("discarding 1 segment (2.0 KiB)"), std::string::npos) << log;
}

TEST(DaemonOptions, RaisesTheSoftFileLimitToTheHardLimit) {
  struct rlimit rl {};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_max <= 256) GTEST_SKIP() << "hard limit too low to observe a raise";
  const std::string path = ScratchSocket("shmbrokerd-rlimit-test");
  DaemonOptions o = Only({"--socket", path});
  o.nofile_soft = 256;
  TestDaemon d(o);
  ASSERT_TRUE(d.ConnectWithin(path).ok()) << d.log();
  std::ifstream limits("/proc/" + std::to_string(d.pid()) + "/limits");
  std::string line;
  bool found = false;
  while (std::getline(limits, line)) {
    if (line.rfind("Max open files", 0) != 0) continue;
    std::istringstream in(line.substr(14));
    std::string soft, hard;
    in >> soft >> hard;
    EXPECT_EQ(soft, hard) << line;
    EXPECT_NE(soft, "256") << line;
    found = true;
  }
  EXPECT_TRUE(found);
  EXPECT_EQ(d.Terminate(), 0);
}

TEST(DaemonOptions, TheDefaultConfigFileIsReadWhenPresent) {
  char tmpl[] = "/tmp/shmbrokerd-defconf-XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string conf = dir + "/shmbrokerd.conf";
  std::string socket = dir + "/from-default-config.sock";
  std::ofstream(conf) << "socket = \"" << socket << "\"\nmax-memory = \"64M\"\n";
  {
    // No --config: the default file (here named by $SHMBROKERD_CONFIG) is read.
    DaemonOptions o = Only({});
    o.env = {"SHMBROKERD_CONFIG=" + conf};
    TestDaemon d(o);
    auto c = d.ConnectWithin(socket);
    ASSERT_TRUE(c.ok()) << c.status().ToString() << "\n" << d.log();
    EXPECT_EQ(c->server().max_memory, 64u << 20);
    EXPECT_EQ(d.Terminate(), 0);
    EXPECT_NE(d.log().find("configuration read from " + conf), std::string::npos) << d.log();
  }
  {
    // Absent: the daemon starts with its defaults.
    std::string other = dir + "/s2.sock";
    DaemonOptions o = Only({"--socket", other});
    o.env = {"SHMBROKERD_CONFIG=" + dir + "/absent.conf"};
    TestDaemon d(o);
    auto c = d.ConnectWithin(other);
    ASSERT_TRUE(c.ok()) << d.log();
    EXPECT_EQ(c->server().max_memory, 0u);
    EXPECT_EQ(d.Terminate(), 0);
  }
  std::filesystem::remove_all(dir);
}

TEST(DaemonOptions, ConfigFileWithAnUnknownKeyIsAUsageError) {
  // A typo must not start a daemon that silently ignores the setting.
  for (std::string line : {"maxmemory = \"8G\"", "bogus = 1"}) {
    char tmpl[] = "/tmp/shmbrokerd-conf-XXXXXX";
    std::string dir = ::mkdtemp(tmpl);
    std::string conf = dir + "/shmbrokerd.conf";
    std::ofstream(conf) << "socket = \"" << dir << "/s.sock\"\n" << line << "\n";
    TestDaemon d(Only({"--config", conf}));
    EXPECT_EQ(d.Wait(), 2) << d.log();
    std::string key = line.substr(0, line.find(' '));
    EXPECT_NE(d.log().find(key), std::string::npos) << "the unknown key is not named: " << d.log();
    EXPECT_FALSE(std::filesystem::exists(dir + "/s.sock"));
    std::filesystem::remove_all(dir);
  }
}

TEST(DaemonOptions, VersionHelpAndBadArguments) {
  {
    TestDaemon d(Only({"--version"}));
    EXPECT_EQ(d.Wait(), 0);
    EXPECT_NE(d.log().find(SHMBROKER_VERSION), std::string::npos) << d.log();
  }
  {
    TestDaemon d(Only({"--help"}));
    EXPECT_EQ(d.Wait(), 0);
    for (const char* opt : {"--socket", "--log-level", "--max-memory", "--config", "--version"}) {
      EXPECT_NE(d.log().find(opt), std::string::npos) << opt;
    }
  }
  {
    TestDaemon d(Only({"--max-memory", "lots", "--socket", ScratchSocket("shmbrokerd-bad")}));
    EXPECT_EQ(d.Wait(), 2);
    EXPECT_NE(d.log().find("--max-memory"), std::string::npos) << d.log();
  }
  // Every usage error exits 2 (not CLI11's internal codes) and names what is wrong.
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"--log-level", "loud"}, {"--bogus"}, {"extra-positional"}, {"--max-memory"}}) {
    TestDaemon d(Only(args));
    EXPECT_EQ(d.Wait(), 2) << args[0] << ": " << d.log();
    EXPECT_NE(d.log().find(args[0]), std::string::npos) << d.log();
  }
  {
    TestDaemon d(
        Only({"--socket", "/nonexistent-dir-for-shmbroker/\x01/" + std::string(120, 'x')}));
    EXPECT_EQ(d.Wait(), 1);
    EXPECT_NE(d.log().find("cannot start"), std::string::npos) << d.log();
  }
}

// A client name with a newline (and escape codes) once forged a complete log line.
TEST(DaemonOptions, AClientNameCannotForgeALogLine) {
  const std::string path = ScratchSocket("shmbrokerd-forge-test");
  TestDaemon d(Only({"--socket", path, "--log-level", "debug"}));
  const std::string forged = "x\n2026-11-24T10:00:00.000 info client 9 connected: 'root'\x1b[2K";
  ASSERT_TRUE(d.ConnectWithin(path).ok()) << d.log();
  {
    auto c = Client::Connect({.socket_path = path, .client_name = forged});
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE(c->Stats().ok());
  }
  EXPECT_EQ(d.Terminate(), 0);
  std::string log = d.log();
  EXPECT_EQ(log.find("\n2026-11-24T10:00:00.000"), std::string::npos) << log;
  EXPECT_EQ(log.find('\x1b'), std::string::npos) << log;
  EXPECT_NE(log.find("connected: 'x\\x0a2026-11-24T10:00:00.000 info client 9"), std::string::npos)
      << log;
}

}  // namespace
}  // namespace shmbroker::testing
