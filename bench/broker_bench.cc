// The cost of shmbroker's operations as ratios to a floor measured in the same run: a bare
// AF_UNIX SOCK_SEQPACKET request/reply between two processes. Absolute times on a shared machine
// mean little; the ratio says how much the broker adds to the one round trip it cannot avoid.
// Large creates are reported in milliseconds, cold against warm, with 2 MiB pages and without,
// and from the warm pool.
#include <benchmark/benchmark.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <shmbroker/client.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

using shmbroker::Client;
using shmbroker::CreateOptions;
using shmbroker::Segment;

// A shmbrokerd this process started, and a connection to it.
struct Daemon {
  pid_t pid = -1;
  std::string socket;
  std::optional<Client> client;
  std::optional<Client> pipelined;  // With ClientOptions::pipeline_releases.
  std::optional<Client> ahead;      // With pipeline_releases and ahead.
};
Daemon g_auto;   // --huge-pages auto (the default): every benchmark but the large "never" ones.
Daemon g_never;  // --huge-pages never.
Daemon g_pool;   // --huge-pages auto --warm-pool 1G: BM_PoolCreate.

// --peer_cpu=N: the daemons and the echo process run on CPU N (else where this process may run).
int g_peer_cpu = -1;

// In a forked child (a daemon, the echo process): moves it to --peer_cpu's CPU.
void PinPeer() {
  if (g_peer_cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(g_peer_cpu, &set);
  if (::sched_setaffinity(0, sizeof(set), &set) != 0) {
    std::perror("shmbroker_bench: sched_setaffinity(--peer_cpu)");
    ::_exit(126);
  }
}

// --- The floor: a bare SEQPACKET round trip to an echo process ----------------------------------

// An echo process (on --peer_cpu's CPU when given). `loop`: it waits as the daemon does, in
// epoll_wait, reads until EAGAIN and re-arms the socket with EPOLL_CTL_MOD (what Asio's async_wait
// does every time); otherwise it blocks in recv. Returns our end, or -1.
int StartEcho(bool loop, pid_t* pid) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return -1;
  *pid = ::fork();
  if (*pid == 0) {
    PinPeer();
    ::close(sv[0]);
    const int fd = sv[1];
    char buf[256];
    ssize_t n;
    if (!loop) {
      while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) ::send(fd, buf, n, MSG_NOSIGNAL);
      ::_exit(0);
    }
    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLET;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    for (;;) {
      epoll_event ready[4];
      if (::epoll_wait(ep, ready, 4, -1) < 0) ::_exit(1);
      while ((n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
        ::send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
      }
      if (n == 0) ::_exit(0);
      ::epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    }
  }
  ::close(sv[1]);
  return sv[0];
}

int g_echo = -1;  // The floor's echo process, for the whole run.
pid_t g_echo_pid = -1;

// One 64-byte request and its reply on `fd`.
void RoundTrip(int fd) {
  char msg[64] = {1}, reply[256];
  ::send(fd, msg, sizeof(msg), MSG_NOSIGNAL);
  benchmark::DoNotOptimize(::recv(fd, reply, sizeof(reply), 0));
}

void BM_SeqpacketRoundTrip(benchmark::State& state) {
  for (auto _ : state) RoundTrip(g_echo);
}
BENCHMARK(BM_SeqpacketRoundTrip)->UseRealTime();

// Times an operation next to the floor, so that a drift of the machine moves both sides of the
// ratio: before every 32nd operation, a burst of 32 bare round trips (timed apart, after one
// untimed that wakes the echo process: both sides are measured as steady loops). The operation's
// time is the benchmark's. Counters: floor_us, the mean bare round trip of the repetition, and
// x_floor, the operation's mean time over it.
class Paired {
 public:
  explicit Paired(benchmark::State& state) : state_(state) {}
  ~Paired() {
    if (floor_n_ == 0 || ops_ == 0) return;
    double floor = floor_ns_ / static_cast<double>(floor_n_);
    state_.counters["floor_us"] = floor / 1000;
    state_.counters["x_floor"] = op_ns_ / static_cast<double>(ops_) / floor;
  }
  // Runs `op` (which returns false to stop) timed.
  template <typename Op>
  bool Time(Op&& op) {
    if (ops_ % kBurst == 0) Floor();
    auto t0 = Clock::now();
    bool ok = op();
    double took = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
    state_.SetIterationTime(took / 1e9);
    op_ns_ += took;
    ++ops_;
    return ok;
  }

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr int kBurst = 32;
  void Floor() {
    RoundTrip(g_echo);
    auto t0 = Clock::now();
    for (int i = 0; i < kBurst; ++i) RoundTrip(g_echo);
    floor_ns_ += std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
    floor_n_ += kBurst;
  }
  benchmark::State& state_;
  double floor_ns_ = 0, op_ns_ = 0;
  std::uint64_t floor_n_ = 0, ops_ = 0;
};

// What an event loop costs by itself: a round trip to an echo that waits as the daemon does
// (epoll, read until EAGAIN, Asio's re-arm), next to the bare floor.
void BM_EventLoopRoundTrip(benchmark::State& state) {
  pid_t pid = -1;
  int fd = StartEcho(/*loop=*/true, &pid);
  if (fd < 0) {
    state.SkipWithError("socketpair");
    return;
  }
  {
    Paired paired(state);
    for (auto _ : state) {
      paired.Time([&] {
        RoundTrip(fd);
        return true;
      });
    }
  }
  ::close(fd);
  ::waitpid(pid, nullptr, 0);
}
BENCHMARK(BM_EventLoopRoundTrip)->UseManualTime();

// --- Small segments: blocks of a shared region the client already maps -------------------------

// Creates `name`; on failure reports it on `state`, which then ends the benchmark.
std::optional<Segment> CreateOrSkip(benchmark::State& state, Client& client,
                                    const std::string& name, std::uint64_t size) {
  auto seg = client.Create({.name = name, .shape = {size}});
  if (!seg.ok()) {
    state.SkipWithError(seg.status().ToString().c_str());
    return std::nullopt;
  }
  benchmark::DoNotOptimize(seg->bytes().data());
  return std::move(seg).value();
}

// Unlinks `name`; on failure reports it on `state`.
bool UnlinkOrSkip(benchmark::State& state, Client& client, const std::string& name) {
  shmbroker::Status s = client.Unlink(name);
  if (!s.ok()) state.SkipWithError(s.ToString().c_str());
  return s.ok();
}

// Attach(); on failure reports it on `state`.
std::optional<Segment> AttachOrSkip(benchmark::State& state, Client& client,
                                    const std::string& name) {
  auto seg = client.Attach(name);
  if (!seg.ok()) {
    state.SkipWithError(seg.status().ToString().c_str());
    return std::nullopt;
  }
  benchmark::DoNotOptimize(seg->bytes().data());
  return std::move(seg).value();
}

// Create() alone of a segment up to --shared-max: one round trip; the daemon hands out a block
// of a shared region, the client finds it in its mapping of that region (kept for the
// connection's life; `keeper` makes sure it is mapped before timing starts). No descriptor, no
// mmap. The detach and unlink that follow are not timed.
void BM_SmallCreate(benchmark::State& state) {
  const auto size = static_cast<std::uint64_t>(state.range(0));
  Client& c = *g_auto.client;
  const std::string keeper_name = "bench/keeper-" + std::to_string(size);
  auto keeper = CreateOrSkip(state, c, keeper_name, size);
  if (!keeper) return;
  {
    Paired paired(state);
    for (auto _ : state) {
      std::optional<Segment> seg;
      if (!paired.Time(
              [&] { return (seg = CreateOrSkip(state, c, "bench/create", size)).has_value(); })) {
        break;
      }
      seg.reset();
      if (!UnlinkOrSkip(state, c, "bench/create")) break;
    }
  }
  keeper.reset();
  (void)c.Unlink(keeper_name);
}
BENCHMARK(BM_SmallCreate)->Arg(4096)->Arg(64 << 10)->UseManualTime();

// Create() of a small refcount segment with a generated name from a client with
// ClientOptions::ahead (and pipeline_releases): it takes the spare made after the previous one and
// sends the create of the next without waiting. The drop that follows (its release rides on that
// next create) is not timed.
//   gap_us:0: creates back to back: the spare's reply may not have come yet, and is waited for;
//   gap_us:100: 100 us of the client's own work (untimed) between them, time for it to come.
void BM_SmallCreateAhead(benchmark::State& state) {
  const auto size = static_cast<std::uint64_t>(state.range(0));
  const auto gap = std::chrono::microseconds(state.range(1));
  Client& c = *g_auto.ahead;
  const CreateOptions options{.shape = {size}, .lifetime = shmbroker::Lifetime::kRefcount};
  Paired paired(state);
  for (auto _ : state) {
    std::optional<Segment> seg;
    for (auto until = std::chrono::steady_clock::now() + gap;
         std::chrono::steady_clock::now() < until;) {
    }
    bool ok = paired.Time([&] {
      auto made = c.Create(options);
      if (!made.ok()) {
        state.SkipWithError(made.status().ToString().c_str());
        return false;
      }
      seg = std::move(made).value();
      return true;
    });
    if (!ok) break;
  }
}
BENCHMARK(BM_SmallCreateAhead)
    ->ArgsProduct({{4096}, {0, 100}})
    ->ArgNames({"", "gap_us"})
    ->UseManualTime();

// Attach() alone, read-only, of a small segment whose shared region this client maps already
// (`keep`, attached once before timing): one round trip, no descriptor, no mmap. The detach is
// not timed.
void BM_SmallAttach(benchmark::State& state) {
  const auto size = static_cast<std::uint64_t>(state.range(0));
  Client& c = *g_auto.client;
  const std::string name = "bench/attach-" + std::to_string(size);
  auto owner = CreateOrSkip(state, c, name, size);
  if (!owner) return;
  auto keep = AttachOrSkip(state, c, name);
  if (keep) {
    Paired paired(state);
    for (auto _ : state) {
      std::optional<Segment> seg;
      if (!paired.Time([&] { return (seg = AttachOrSkip(state, c, name)).has_value(); })) break;
    }
  }
  keep.reset();
  owner.reset();
  (void)c.Unlink(name);
}
BENCHMARK(BM_SmallAttach)->Arg(4096)->Arg(64 << 10)->UseManualTime();

// Attach() of a segment above --shared-max, so in a region of its own: every attach receives the
// descriptor, maps it and prefaults it (the detach that unmaps and releases it is not timed).
void BM_AttachOwnRegion(benchmark::State& state) {
  const auto size = static_cast<std::uint64_t>(state.range(0));
  Client& c = *g_auto.client;
  const std::string name = "bench/own-" + std::to_string(size);
  auto owner = CreateOrSkip(state, c, name, size);
  if (!owner) return;
  {
    Paired paired(state);
    for (auto _ : state) {
      std::optional<Segment> seg;
      if (!paired.Time([&] { return (seg = AttachOrSkip(state, c, name)).has_value(); })) break;
    }
  }
  owner.reset();
  (void)c.Unlink(name);
}
BENCHMARK(BM_AttachOwnRegion)->Arg(4 << 20)->UseManualTime();

// What a user pays for a whole cycle: Create() + destroying the Segment (detach) + Unlink().
//   pipelined:0: destroying the Segment waits for the daemon's answer (three round trips);
//   pipelined:1: with ClientOptions::pipeline_releases the release rides on the Unlink (two).
void BM_CreateDetachUnlink(benchmark::State& state) {
  const auto size = static_cast<std::uint64_t>(state.range(0));
  Client& c = state.range(1) != 0 ? *g_auto.pipelined : *g_auto.client;
  Paired paired(state);
  for (auto _ : state) {
    bool ok = paired.Time([&] {
      if (!CreateOrSkip(state, c, "bench/cycle", size)) return false;  // Detached at once.
      return UnlinkOrSkip(state, c, "bench/cycle");
    });
    if (!ok) break;
  }
}
BENCHMARK(BM_CreateDetachUnlink)
    ->ArgsProduct({{4096}, {0, 1}})
    ->ArgNames({"", "pipelined"})
    ->UseManualTime();

// --- Large segments: regions of their own -------------------------------------------------------

// Create() of `bytes` (a region of its own): the daemon makes the memfd and reserves every page
// (with huge:1, on a daemon with --huge-pages auto, collapsing them into 2 MiB pages first), the
// client maps it and prefaults it (MADV_POPULATE_WRITE), as BM_Create always measured.
//   warm:0 (cold): every segment of the repetition stays alive, so each create takes memory the
//          daemon did not just give back.
//   warm:1: each create follows right after the detach and unlink of one of the same size (the
//          first after an untimed create and unlink). These daemons keep no pool (--warm-pool
//          0), so its memory went back to the kernel and comes from the kernel again.
// Counter huge: the share of the live segments' memory on 2 MiB pages (stats).
void LargeCreate(benchmark::State& state, Daemon& d, std::uint64_t size, bool warm) {
  Client& c = *d.client;
  std::vector<std::pair<std::string, Segment>> alive;
  int n = 0;
  auto release = [&] {
    bool ok = true;
    for (auto& [name, seg] : alive) {
      seg = Segment();
      ok = UnlinkOrSkip(state, c, name) && ok;
    }
    alive.clear();
    return ok;
  };
  auto create = [&] {
    std::string name = "bench/large-" + std::to_string(n++);
    auto seg = CreateOrSkip(state, c, name, size);
    if (seg) alive.emplace_back(name, std::move(seg).value());
    return seg.has_value();
  };
  if (warm && (!create() || !release())) return;
  for (auto _ : state) {
    if (warm) {
      state.PauseTiming();
      bool released = release();
      state.ResumeTiming();
      if (!released) break;
    }
    if (!create()) break;
  }
  auto stats = c.Stats();
  if (stats.ok() && !alive.empty()) {
    state.counters["huge"] =
        static_cast<double>(stats->huge_page_bytes) / static_cast<double>(size * alive.size());
  }
  release();
}

void BM_LargeCreate(benchmark::State& state) {
  LargeCreate(state, state.range(1) != 0 ? g_auto : g_never,
              static_cast<std::uint64_t>(state.range(0)), state.range(2) != 0);
}

// Cold keeps every segment of a repetition: 6 x 64 MiB, 2 x 512 MiB at most.
BENCHMARK(BM_LargeCreate)
    ->ArgNames({"bytes", "huge", "warm"})
    ->ArgsProduct({{64 << 20}, {1, 0}, {0, 1}})
    ->Iterations(6)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LargeCreate)
    ->ArgNames({"bytes", "huge", "warm"})
    ->ArgsProduct({{512 << 20}, {1, 0}, {0, 1}})
    ->Iterations(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// As warm:1 above, on a daemon with --warm-pool 1G: the segment just released is zeroed on the
// daemon's worker and given to the next create, which waits for the zeroing if it is not done.
// Counter reused: the share of timed creates the pool served (stats).
void BM_PoolCreate(benchmark::State& state) {
  Client& c = *g_pool.client;
  auto before = c.Stats();
  LargeCreate(state, g_pool, static_cast<std::uint64_t>(state.range(0)), /*warm=*/true);
  auto after = c.Stats();
  if (before.ok() && after.ok() && state.iterations() > 0) {
    // The untimed first create of a repetition may be served too (by the previous one's memory).
    state.counters["reused"] =
        std::min(1.0, static_cast<double>(after->pool_reused - before->pool_reused) /
                          static_cast<double>(state.iterations()));
  }
}
BENCHMARK(BM_PoolCreate)
    ->ArgNames({"bytes"})
    ->Arg(64 << 20)
    ->Iterations(6)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PoolCreate)
    ->ArgNames({"bytes"})
    ->Arg(512 << 20)
    ->Iterations(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// --- The daemons and the report ------------------------------------------------------------------

void StartDaemon(Daemon& d, const std::string& name, const char* huge_pages,
                 const char* warm_pool = "0") {
  std::string dir = std::filesystem::temp_directory_path() /
                    ("shmbroker-bench-" + std::to_string(::getpid()) + "-" + name);
  std::filesystem::create_directories(dir);
  d.socket = dir + "/s.sock";
  d.pid = ::fork();
  if (d.pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    PinPeer();
    ::execl(SHMBROKERD_PATH, SHMBROKERD_PATH, "--socket", d.socket.c_str(), "--log-level", "warn",
            "--huge-pages", huge_pages, "--warm-pool", warm_pool, static_cast<char*>(nullptr));
    ::_exit(127);
  }
  for (int i = 0; i < 500; ++i) {
    auto c = Client::Connect({.socket_path = d.socket, .client_name = "bench"});
    if (c.ok()) {
      d.client.emplace(std::move(c).value());
      auto p = Client::Connect(
          {.socket_path = d.socket, .client_name = "bench-pipelined", .pipeline_releases = true});
      if (!p.ok()) break;
      d.pipelined.emplace(std::move(p).value());
      auto a = Client::Connect({.socket_path = d.socket,
                                .client_name = "bench-ahead",
                                .pipeline_releases = true,
                                .ahead = true});
      if (!a.ok()) break;
      d.ahead.emplace(std::move(a).value());
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::fprintf(stderr, "shmbroker_bench: the daemon at %s did not start\n", d.socket.c_str());
  std::exit(1);
}

void StopDaemon(Daemon& d) {
  d.client.reset();
  d.pipelined.reset();
  d.ahead.reset();
  ::kill(d.pid, SIGTERM);
  ::waitpid(d.pid, nullptr, 0);
  std::filesystem::remove_all(std::filesystem::path(d.socket).parent_path());
}

// Keeps the medians of every benchmark (and of its counters) while printing as usual.
class MedianReporter : public benchmark::ConsoleReporter {
 public:
  using ConsoleReporter::ConsoleReporter;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name == "median") {
        std::string key =
            r.run_name.function_name + (r.run_name.args.empty() ? "" : "/" + r.run_name.args);
        // In nanoseconds whatever the benchmark's display unit.
        medians_[key] =
            r.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(r.time_unit) * 1e9;
        for (const auto& [name, counter] : r.counters) counters_[key + "#" + name] = counter.value;
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
  std::map<std::string, double> medians_;   // ns per iteration.
  std::map<std::string, double> counters_;  // "key#counter".
};

// Where this process, the daemons and the echo process run.
std::string Placement() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) != 0) return "unknown";
  std::string cpus;
  for (int i = 0; i < CPU_SETSIZE; ++i) {
    if (CPU_ISSET(i, &set)) cpus += (cpus.empty() ? "" : ",") + std::to_string(i);
  }
  if (g_peer_cpu >= 0) {
    return "client on CPU " + cpus + ", daemons and echo process on CPU " +
           std::to_string(g_peer_cpu);
  }
  return (CPU_COUNT(&set) == 1 ? "all on CPU " : "all unpinned, on CPUs ") + cpus;
}

void PrintSummary(const MedianReporter& reporter) {
  const auto& m = reporter.medians_;
  const auto& counters = reporter.counters_;
  std::printf("\nplacement: %s\n", Placement().c_str());
  struct Row {
    const char* key;
    const char* what;
    int round_trips;
  };
  const Row rows[] = {
      {"BM_EventLoopRoundTrip", "echo through an epoll loop (as Asio)", 1},
      {"BM_SmallCreate/4096", "create 4 KiB, region mapped", 1},
      {"BM_SmallCreate/65536", "create 64 KiB, region mapped", 1},
      {"BM_SmallCreateAhead/4096/gap_us:0", "create 4 KiB ahead, back to back", 1},
      {"BM_SmallCreateAhead/4096/gap_us:100", "create 4 KiB ahead, 100 us apart", 1},
      {"BM_SmallAttach/4096", "attach 4 KiB, region mapped", 1},
      {"BM_SmallAttach/65536", "attach 64 KiB, region mapped", 1},
      {"BM_AttachOwnRegion/4194304", "attach 4 MiB own region: fd+mmap", 1},
      {"BM_CreateDetachUnlink/4096/pipelined:0", "create+detach+unlink 4 KiB", 3},
      {"BM_CreateDetachUnlink/4096/pipelined:1", "same, release riding on the unlink", 2},
  };
  // Medians over the repetitions; x floor is the median of each repetition's own ratio.
  std::printf("\n%-38s %9s %9s %8s %4s %9s\n", "operation", "median us", "floor us", "x floor",
              "RTs", "x per RT");
  if (auto floor = m.find("BM_SeqpacketRoundTrip"); floor != m.end()) {
    std::printf("%-38s %9.1f %9s %8s %4d %9s\n", "floor: bare SEQPACKET request/reply",
                floor->second / 1000, "", "1.00", 1, "1.00");
  }
  for (const Row& r : rows) {
    auto it = m.find(r.key);
    auto floor = counters.find(std::string(r.key) + "#floor_us");
    auto ratio = counters.find(std::string(r.key) + "#x_floor");
    if (it == m.end() || floor == counters.end() || ratio == counters.end()) continue;
    std::printf("%-38s %9.1f %9.1f %8.2f %4d %9.2f\n", r.what, it->second / 1000, floor->second,
                ratio->second, r.round_trips, ratio->second / r.round_trips);
  }
  bool header = false;
  for (int mib : {64, 512}) {
    for (int huge : {1, 0}) {
      std::string key = "BM_LargeCreate/bytes:" + std::to_string(std::uint64_t(mib) << 20) +
                        "/huge:" + std::to_string(huge) + "/warm:";
      auto cold = m.find(key + "0"), warm = m.find(key + "1");
      if (cold == m.end() && warm == m.end()) continue;
      if (!header) {
        std::printf("\n%-8s %-12s %9s %9s %10s %12s %9s %10s\n", "create", "--huge-pages",
                    "cold ms", "warm ms", "warm/cold", "on 2 MiB pg", "pool ms", "pool/cold");
        header = true;
      }
      auto ms = [&](auto it) { return it == m.end() ? -1.0 : it->second / 1e6; };
      auto share = counters.find(key + (cold != m.end() ? "0" : "1") + "#huge");
      // The pool's daemon has --huge-pages auto: its row is the auto one.
      auto pool = huge ? m.find("BM_PoolCreate/bytes:" + std::to_string(std::uint64_t(mib) << 20))
                       : m.end();
      // The pool's columns only where it ran ("-" elsewhere).
      char pool_ms[16] = "-", pool_ratio[16] = "-";
      if (pool != m.end()) std::snprintf(pool_ms, sizeof(pool_ms), "%.1f", ms(pool));
      if (pool != m.end() && cold != m.end()) {
        std::snprintf(pool_ratio, sizeof(pool_ratio), "%.2f", ms(pool) / ms(cold));
      }
      std::printf("%-8s %-12s %9.1f %9.1f %10.2f %11.0f%% %9s %10s\n",
                  (std::to_string(mib) + " MiB").c_str(), huge ? "auto" : "never", ms(cold),
                  ms(warm), cold != m.end() && warm != m.end() ? ms(warm) / ms(cold) : 0.0,
                  share == counters.end() ? 0.0 : 100 * share->second, pool_ms, pool_ratio);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Our own flag first: Google Benchmark rejects what it does not know.
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--peer_cpu=", 11) == 0) {
      g_peer_cpu = std::atoi(argv[i] + 11);
    } else {
      args.push_back(argv[i]);
    }
  }
  // Medians need repetitions; keep the default run short on a small machine. Repetitions
  // interleaved at random: the floor and each operation are sampled over the same stretch of
  // time, so a drift of the machine moves both.
  bool has_reps = false, has_interleave = false;
  for (char* a : args) {
    has_reps |= std::strstr(a, "--benchmark_repetitions") != nullptr;
    has_interleave |= std::strstr(a, "--benchmark_enable_random_interleaving") != nullptr;
  }
  static char reps[] = "--benchmark_repetitions=7";
  static char aggr[] = "--benchmark_report_aggregates_only=true";
  static char min_time[] = "--benchmark_min_time=0.1";
  static char interleave[] = "--benchmark_enable_random_interleaving=true";
  if (!has_reps) args.insert(args.begin() + 1, {reps, aggr, min_time});
  if (!has_interleave) args.insert(args.begin() + 1, interleave);
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 2;

  g_echo = StartEcho(/*loop=*/false, &g_echo_pid);
  if (g_echo < 0) {
    std::perror("shmbroker_bench: socketpair");
    return 1;
  }
  StartDaemon(g_auto, "auto", "auto");
  StartDaemon(g_never, "never", "never");
  StartDaemon(g_pool, "pool", "auto", "1G");
  MedianReporter reporter(::isatty(STDOUT_FILENO) ? benchmark::ConsoleReporter::OO_Defaults
                                                  : benchmark::ConsoleReporter::OO_Tabular);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  StopDaemon(g_auto);
  StopDaemon(g_never);
  StopDaemon(g_pool);
  ::close(g_echo);
  ::waitpid(g_echo_pid, nullptr, 0);
  PrintSummary(reporter);
  return 0;
}
