// Requests and connections refused at a limit, by limit: what an operator raises or investigates
// (errors_total{code="RESOURCE_EXHAUSTED"} lumps them together).
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace shmbroker::daemon {

enum class Limit {
  kMemoryPerUser,             // --max-memory-per-user
  kSegmentsPerUser,           // --max-segments-per-user
  kMaxMemory,                 // --max-memory
  kMachineMemory,             // what the machine (or cgroup) has available
  kTicketsPerUser,            // arrays in flight per user
  kAttachmentsPerConnection,  // --max-attachments-per-connection
  kConnections,               // --max-connections
  kConnectionsPerUser,        // --max-connections-per-user
  kFileDescriptors,           // the daemon's RLIMIT_NOFILE
  kAttachmentsPerUser,        // kAttachmentsPerUserFactor connections' worth
  kFdStore,                   // --fd-store-max: systemd's fd store, all or a user's quarter
};

class Refusals {
 public:
  static constexpr std::array<std::string_view, 11> kNames = {
      "memory_per_user",  "segments_per_user",          "max_memory",  "machine_memory",
      "tickets_per_user", "attachments_per_connection", "connections", "connections_per_user",
      "file_descriptors", "attachments_per_user",       "fd_store"};
  // One name a Limit, in its order.
  static_assert(static_cast<std::size_t>(Limit::kFdStore) + 1 == kNames.size());

  void Count(Limit limit) { ++counts_[static_cast<std::size_t>(limit)]; }
  std::uint64_t operator[](std::size_t i) const { return counts_[i]; }

 private:
  std::array<std::uint64_t, kNames.size()> counts_{};
};

}  // namespace shmbroker::daemon
