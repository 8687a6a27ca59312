// The README's C++ example, built against the installed package by tests/install/check.sh.
#include <shmbroker/client.h>

#include <cstdio>

int main() {
  auto client = shmbroker::Client::Connect();  // $SHMBROKER_SOCKET or the default path
  if (!client.ok()) return std::fprintf(stderr, "%s\n", client.status().ToString().c_str()), 1;

  auto seg = client->CreateArray<float>("demo/weights", {1024, 1024}, 0644);
  if (!seg.ok()) return std::fprintf(stderr, "%s\n", seg.status().ToString().c_str()), 1;
  std::span<float> w = seg->as<float>().value();
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = 0.5f * i;

  // Any process, Python or C++, can now attach "demo/weights" read-only, zero-copy.
  auto view = client->Attach("demo/weights");
  std::printf("%s %s %zu bytes, w[3] = %g\n", view->name().c_str(), view->dtype().c_str(),
              view->size_bytes(), view->as<const float>().value()[3]);
  return client->Unlink("demo/weights").ok() ? 0 : 1;
}
