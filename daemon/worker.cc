#include "worker.h"

#include <asio/post.hpp>

namespace shmbroker::daemon {

Worker::Worker(asio::io_context& io) : io_(io), thread_([this] { Loop(); }) {}

Worker::~Worker() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    jobs_.clear();
  }
  cv_.notify_all();
  thread_.join();
}

void Worker::Run(std::function<void()> job, std::function<void()> then) {
  {
    std::lock_guard lock(mu_);
    jobs_.emplace_back(std::move(job), std::move(then));
  }
  cv_.notify_one();
}

void Worker::Loop() {
  for (;;) {
    std::pair<std::function<void()>, std::function<void()>> next;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      next = std::move(jobs_.front());
      jobs_.pop_front();
    }
    next.first();
    asio::post(io_, std::move(next.second));
  }
}

}  // namespace shmbroker::daemon
