// Small vocabulary of the public API that the daemon speaks too.
#pragma once

namespace shmbroker {

// Memory layout of the array in a segment.
enum class Order { kC = 0, kF = 1 };

// How a segment is mapped. Read-only is enforced by the kernel: the mapping and the descriptor
// are read-only.
enum class Access { kReadOnly = 0, kReadWrite = 1 };

}  // namespace shmbroker
