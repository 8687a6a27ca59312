// The daemon's limits: what one user, one connection or everyone together may hold, each with its
// option. A value of 0 means "no limit" where a comment says so.
#pragma once

#include <chrono>
#include <cstdint>

namespace shmbroker::daemon {

struct Limits {
  // --max-memory: bytes all segments together may hold. 0: none beyond the machine's.
  std::uint64_t max_memory = 0;
  // --max-memory-per-user: bytes one user's segments (and the unlinked ones its connections still
  // hold) may take. 0: none. Root is exempt.
  std::uint64_t max_memory_per_user = 0;
  // --max-segments-per-user: likewise, counted in segments. 0: none. Root is exempt.
  std::uint64_t max_segments_per_user = 100'000;
  // --max-connections: clients at once, all users together. 0: derived from the file limit.
  std::uint32_t max_connections = 0;
  // --max-connections-per-user: clients of one uid at once. Root is exempt.
  std::uint32_t max_connections_per_user = 256;
  // --max-attachments-per-connection: attachments one connection may hold.
  std::uint32_t max_attachments_per_connection = 65'536;
  // --handshake-timeout: how long a new connection may take to say hello.
  std::chrono::milliseconds handshake_timeout{10'000};
  // --in-flight-timeout: how long a ticket (an array in flight) holds its segment unredeemed.
  std::chrono::milliseconds in_flight_timeout{60'000};
  // --fd-store-max: the service manager's FileDescriptorStoreMax (entries it keeps at most).
  std::uint32_t fd_store_max = 65'536;
};

}  // namespace shmbroker::daemon
