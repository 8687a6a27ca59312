// The cost of shmbroker's operations as ratios to a floor measured in the same run: a bare
// AF_UNIX SOCK_SEQPACKET request/reply between two processes. Absolute times on a shared machine
// mean little; the ratio says how much the broker adds to the one round trip it cannot avoid.
#include <benchmark/benchmark.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <shmbroker/client.h>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

using shmbroker::Access;
using shmbroker::Client;

std::string g_socket;
std::optional<Client> g_client;

// --- The floor: a bare SEQPACKET round trip to an echo process ----------------------------------

void BM_SeqpacketRoundTrip(benchmark::State& state) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    state.SkipWithError("socketpair");
    return;
  }
  pid_t echo = ::fork();
  if (echo == 0) {
    ::close(sv[0]);
    char buf[256];
    ssize_t n;
    while ((n = ::recv(sv[1], buf, sizeof(buf), 0)) > 0) ::send(sv[1], buf, n, MSG_NOSIGNAL);
    ::_exit(0);
  }
  ::close(sv[1]);
  char msg[64] = {1}, reply[256];
  for (auto _ : state) {
    ::send(sv[0], msg, sizeof(msg), MSG_NOSIGNAL);
    benchmark::DoNotOptimize(::recv(sv[0], reply, sizeof(reply), 0));
  }
  ::close(sv[0]);
  ::waitpid(echo, nullptr, 0);
}
BENCHMARK(BM_SeqpacketRoundTrip)->UseRealTime();

// --- The broker ----------------------------------------------------------------------------------

// Creates `name`; on failure reports it on `state`, which then ends the benchmark.
std::optional<shmbroker::Segment> CreateOrSkip(benchmark::State& state, const std::string& name,
                                               std::uint64_t size) {
  auto seg = g_client->Create({.name = name, .shape = {size}});
  if (!seg.ok()) {
    state.SkipWithError(seg.status().ToString().c_str());
    return std::nullopt;
  }
  benchmark::DoNotOptimize(seg->bytes().data());
  return std::move(seg).value();
}

// Create() alone: one round trip, plus memfd_create, sizing, sealing, fallocate in the daemon and
// the mapping in the client. The detach and unlink that follow are not timed.
void BM_Create(benchmark::State& state) {
  const std::uint64_t size = static_cast<std::uint64_t>(state.range(0));
  for (auto _ : state) {
    auto seg = CreateOrSkip(state, "bench/create", size);
    if (!seg) return;
    state.PauseTiming();
    seg.reset();
    bool unlinked = g_client->Unlink("bench/create").ok();
    state.ResumeTiming();
    if (!unlinked) {
      state.SkipWithError("unlink");
      return;
    }
  }
}
BENCHMARK(BM_Create)->Arg(4096)->Arg(1 << 20)->UseRealTime();

// Attach() alone: one round trip. With the region cached (another Segment of the same memory
// stays alive on this client) no fd travels and nothing is mapped; without, every attach
// receives the fd and maps it (the detach that unmaps and releases it is not timed).
void Attach(benchmark::State& state, bool cached) {
  const std::uint64_t size = static_cast<std::uint64_t>(state.range(0));
  std::string name = "bench/attach-" + std::to_string(size);
  auto owner = CreateOrSkip(state, name, size);
  if (!owner) return;
  std::optional<shmbroker::Segment> keep;
  if (cached) keep.emplace(std::move(g_client->Attach(name)).value());
  for (auto _ : state) {
    auto seg = g_client->Attach(name);
    if (!seg.ok()) {
      state.SkipWithError(seg.status().ToString().c_str());
      return;
    }
    benchmark::DoNotOptimize(seg->bytes().data());
    state.PauseTiming();
    seg = shmbroker::Status::Internal("released");
    state.ResumeTiming();
  }
  keep.reset();
  owner.reset();
  (void)g_client->Unlink(name);
}
void BM_AttachCached(benchmark::State& state) { Attach(state, true); }
void BM_AttachUncached(benchmark::State& state) { Attach(state, false); }
BENCHMARK(BM_AttachCached)->Arg(4096)->UseRealTime();
BENCHMARK(BM_AttachUncached)->Arg(4096)->Arg(1 << 20)->UseRealTime();

// What a user pays for a whole cycle: Create() + destroying the Segment (detach) + Unlink().
void BM_CreateDetachUnlink(benchmark::State& state) {
  const std::uint64_t size = static_cast<std::uint64_t>(state.range(0));
  for (auto _ : state) {
    if (!CreateOrSkip(state, "bench/cycle", size)) return;  // Destroyed at once: detached.
    if (!g_client->Unlink("bench/cycle").ok()) {
      state.SkipWithError("unlink");
      return;
    }
  }
}
BENCHMARK(BM_CreateDetachUnlink)->Arg(4096)->UseRealTime();

// --- The daemon and the report -------------------------------------------------------------------

pid_t StartDaemon() {
  std::string dir =
      std::filesystem::temp_directory_path() / ("shmbroker-bench-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  g_socket = dir + "/s.sock";
  pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::execl(SHMBROKERD_PATH, SHMBROKERD_PATH, "--socket", g_socket.c_str(), "--log-level", "warn",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  for (int i = 0; i < 500; ++i) {
    auto c = Client::Connect({.socket_path = g_socket, .client_name = "bench"});
    if (c.ok()) {
      g_client.emplace(std::move(c).value());
      return pid;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::fprintf(stderr, "shmbroker_bench: the daemon at %s did not start\n", g_socket.c_str());
  std::exit(1);
}

// Keeps the medians of every benchmark while printing as usual.
class MedianReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name == "median") {
        medians_[r.run_name.function_name +
                 (r.run_name.args.empty() ? "" : "/" + r.run_name.args)] = r.GetAdjustedRealTime();
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
  std::map<std::string, double> medians_;  // ns per iteration (time unit: ns).
};

}  // namespace

int main(int argc, char** argv) {
  // Medians need repetitions; keep the default run short on a small machine.
  std::vector<char*> args(argv, argv + argc);
  bool has_reps = false;
  for (int i = 1; i < argc; ++i)
    has_reps |= std::strstr(argv[i], "--benchmark_repetitions") != nullptr;
  static char reps[] = "--benchmark_repetitions=7";
  static char aggr[] = "--benchmark_report_aggregates_only=true";
  static char min_time[] = "--benchmark_min_time=0.1";
  if (!has_reps) args.insert(args.begin() + 1, {reps, aggr, min_time});
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 2;

  pid_t daemon = StartDaemon();
  MedianReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  g_client.reset();
  ::kill(daemon, SIGTERM);
  ::waitpid(daemon, nullptr, 0);
  std::filesystem::remove_all(std::filesystem::path(g_socket).parent_path());

  auto floor = reporter.medians_.find("BM_SeqpacketRoundTrip");
  if (floor == reporter.medians_.end()) return 0;
  struct Row {
    const char* key;
    const char* what;
    int round_trips;
  };
  const Row rows[] = {
      {"BM_SeqpacketRoundTrip", "floor: bare SEQPACKET request/reply", 1},
      {"BM_AttachCached/4096", "attach 4 KiB, region cached", 1},
      {"BM_AttachUncached/4096", "attach 4 KiB, fd sent + mmap", 1},
      {"BM_AttachUncached/1048576", "attach 1 MiB, fd sent + mmap", 1},
      {"BM_Create/4096", "create 4 KiB", 1},
      {"BM_Create/1048576", "create 1 MiB", 1},
      {"BM_CreateDetachUnlink/4096", "create+detach+unlink 4 KiB", 3},
  };
  std::printf("\n%-36s %10s %8s %6s %10s\n", "operation", "median us", "x floor", "RTs",
              "x per RT");
  for (const Row& r : rows) {
    auto it = reporter.medians_.find(r.key);
    if (it == reporter.medians_.end()) continue;
    double ratio = it->second / floor->second;
    std::printf("%-36s %10.1f %8.2f %6d %10.2f\n", r.what, it->second / 1000, ratio, r.round_trips,
                ratio / r.round_trips);
  }
  return 0;
}
