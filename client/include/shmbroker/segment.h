// Segment: a mapped, named shared-memory segment, and its metadata.
#pragma once

#include <bit>
#include <chrono>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "shmbroker/status.h"
#include "shmbroker/types.h"

namespace shmbroker {

namespace internal {
class ClientCore;
struct Region;
}  // namespace internal

// A connection that holds attachments of a segment.
struct Holder {
  std::uint32_t pid = 0;  // Of the process that opened the connection.
  std::uint32_t uid = 0;
  std::string client_name;        // As the client named itself ("python:train.py", "shmctl").
  std::uint32_t attachments = 0;  // Of this segment on that connection.
  std::uint32_t writable = 0;     // Of them, read-write.
};

// Everything the daemon knows about a segment (a snapshot taken when it was asked).
struct SegmentInfo {
  std::string name;
  std::string dtype;                 // NumPy type string: "<f8", "|u1", "<M8[ns]", ...
  std::vector<std::uint64_t> shape;  // 0..32 dimensions.
  Order order = Order::kC;
  std::uint64_t nbytes = 0;  // itemsize * product(shape).
  std::map<std::string, std::string> attrs;
  std::uint32_t uid = 0;  // Owner: the creator's uid.
  std::uint32_t gid = 0;
  std::uint32_t creator_pid = 0;
  std::chrono::system_clock::time_point created;
  std::uint32_t mode = 0600;       // Permission bits, as for files.
  std::uint32_t attachments = 0;   // Live attachments over all clients.
  bool creator_connected = false;  // The creating connection is still open.
  // Client::Stat and ListUnlinked only (empty from List): the connections holding it, at most
  // 100; one that may still map an unlinked segment without an attachment shows 0 attachments.
  std::vector<Holder> holders;
  bool holders_truncated = false;
  bool unlinked = false;  // From ListUnlinked: it has lost its name but is still in use.
  Lifetime lifetime = Lifetime::kPersistent;
  // When its ttl unlinks it; unset: never.
  std::optional<std::chrono::system_clock::time_point> expires;
  bool sealed = false;          // Immutable (Client::Seal).
  std::uint32_t in_flight = 0;  // Arrays pickled to another process, not attached there yet.
};

// The NumPy type string of C++ type T in this machine's byte order, e.g. DtypeOf<float>() is
// "<f4" on x86-64. Defined for bool, std::byte, integers, float, double,
// std::complex<float|double>.
template <typename T>
constexpr std::string_view DtypeOf() {
  using U = std::remove_cv_t<T>;
  constexpr bool le = std::endian::native == std::endian::little;
  if constexpr (std::is_same_v<U, bool>) {
    return "|b1";
  } else if constexpr (std::is_same_v<U, std::byte>) {
    return "|u1";
  } else if constexpr (std::is_integral_v<U> && sizeof(U) == 1) {
    return std::is_signed_v<U> ? "|i1" : "|u1";
  } else if constexpr (std::is_integral_v<U> && sizeof(U) == 2) {
    return std::is_signed_v<U> ? (le ? "<i2" : ">i2") : (le ? "<u2" : ">u2");
  } else if constexpr (std::is_integral_v<U> && sizeof(U) == 4) {
    return std::is_signed_v<U> ? (le ? "<i4" : ">i4") : (le ? "<u4" : ">u4");
  } else if constexpr (std::is_integral_v<U> && sizeof(U) == 8) {
    return std::is_signed_v<U> ? (le ? "<i8" : ">i8") : (le ? "<u8" : ">u8");
  } else if constexpr (std::is_same_v<U, float>) {
    return le ? "<f4" : ">f4";
  } else if constexpr (std::is_same_v<U, double>) {
    return le ? "<f8" : ">f8";
  } else if constexpr (std::is_same_v<U, std::complex<float>>) {
    return le ? "<c8" : ">c8";
  } else if constexpr (std::is_same_v<U, std::complex<double>>) {
    return le ? "<c16" : ">c16";
  } else {
    static_assert(sizeof(U) == 0, "no NumPy dtype is known for this type");
  }
}

// A segment mapped into this process. Move-only; owns its mapping and its attachment: when the
// Segment is destroyed (or Detach() is called) the daemon is told and, once no Segment of this
// client uses the memory, it is unmapped. Spans taken from a Segment must not outlive it.
// With ClientOptions::pipeline_releases, destruction queues the release, which rides on the
// client's next request (or Client::Flush()): no round trip and no packet per Segment.
//
// The memory stays valid even if the segment is unlinked or the Client is destroyed: the Segment
// keeps what it needs alive. A Segment may be used from any thread; concurrent writes to the
// bytes are the caller's to coordinate.
class Segment {
 public:
  Segment() = default;  // Empty: valid() is false.
  Segment(Segment&& other) noexcept;
  Segment& operator=(Segment&& other) noexcept;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment();

  bool valid() const { return core_ != nullptr; }

  const SegmentInfo& info() const { return info_; }
  const std::string& name() const { return info_.name; }
  const std::string& dtype() const { return info_.dtype; }
  std::span<const std::uint64_t> shape() const { return info_.shape; }
  Order order() const { return info_.order; }
  std::size_t size_bytes() const { return static_cast<std::size_t>(info_.nbytes); }
  Access access() const { return access_; }
  bool writable() const { return access_ == Access::kReadWrite; }

  // The segment's bytes (empty for a zero-size segment).
  std::span<const std::byte> bytes() const { return {data_, size_bytes()}; }
  // Writable bytes; FAILED_PRECONDITION when attached read-only.
  Result<std::span<std::byte>> mutable_bytes();

  // The segment as elements of T, after checking that its dtype is DtypeOf<T>() (else
  // FAILED_PRECONDITION). A non-const T also needs read-write access.
  template <typename T>
  Result<std::span<T>> as() {
    if (Status s = CheckView(DtypeOf<T>(), !std::is_const_v<T>, sizeof(T)); !s.ok()) return s;
    return std::span<T>(reinterpret_cast<T*>(data_), size_bytes() / sizeof(T));
  }
  template <typename T>
  Result<std::span<const T>> as() const {
    if (Status s = CheckView(DtypeOf<T>(), false, sizeof(T)); !s.ok()) return s;
    return std::span<const T>(reinterpret_cast<const T*>(data_), size_bytes() / sizeof(T));
  }

  // Releases the attachment now and waits for the daemon to acknowledge it (releases queued
  // before it ride along). The Segment is empty afterwards. The destructor does the same (with
  // ClientOptions::pipeline_releases it queues the release instead) and ignores failures.
  Status Detach();

 private:
  friend class internal::ClientCore;
  Status CheckView(std::string_view dtype, bool write, std::size_t elem_size) const;
  Status Release(bool wait);

  std::shared_ptr<internal::ClientCore> core_;
  std::shared_ptr<internal::Region> region_;
  std::byte* data_ = nullptr;
  SegmentInfo info_;
  std::uint64_t attachment_id_ = 0;
  Access access_ = Access::kReadOnly;
};

}  // namespace shmbroker
