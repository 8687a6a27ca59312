// Small vocabulary of the public API that the daemon speaks too.
#pragma once

namespace shmbroker {

// Memory layout of the array in a segment.
enum class Order { kC = 0, kF = 1 };

// How a segment is mapped. Read-only is enforced by the kernel: the mapping and the descriptor
// are read-only.
enum class Access { kReadOnly = 0, kReadWrite = 1 };

// When the daemon unlinks a segment by itself: never (persistent, until unlinked), when the
// connection that created it closes, or when its last reference (attachment, array in flight)
// anywhere goes. Fixed at create; any lifetime may also have a ttl.
enum class Lifetime { kPersistent = 0, kConnection = 1, kRefcount = 2 };

}  // namespace shmbroker
