// Slow work off the event loop (reserving the memory of a large segment takes ~0.5 ms per MiB):
// jobs run one at a time on a thread of their own, and each one's completion is posted back to
// the event loop, where everything else in the daemon lives.
#pragma once

#include <asio/io_context.hpp>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace shmbroker::daemon {

class Worker {
 public:
  explicit Worker(asio::io_context& io);
  // Lets the job in progress finish, drops the others (their completions never run), joins.
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs `job` on the worker thread, then `then` on the event loop. `job` must touch nothing the
  // event loop owns.
  void Run(std::function<void()> job, std::function<void()> then);

 private:
  void Loop();

  asio::io_context& io_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::function<void()>, std::function<void()>>> jobs_;
  bool stopping_ = false;
  std::thread thread_;  // Last: started once the rest is in place.
};

}  // namespace shmbroker::daemon
