// shmbroker's one error model: every fallible call returns a Status or a Result<T>.
//
// The codes are the wire protocol's codes (proto/shmbroker.proto, enum Code) with the same
// numbers and names; the Python client raises one exception class per code.
//
// Status and Result are plain values: copyable, movable, and safe to use from any thread as long
// as one object is not modified concurrently.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace shmbroker {

enum class Code : int {
  kOk = 0,
  kInvalidArgument = 1,     // Bad name, dtype, shape, mode, attribute or pattern.
  kNotFound = 2,            // No segment of that name.
  kAlreadyExists = 3,       // Create with a name that is taken.
  kPermissionDenied = 4,    // The segment's mode or ownership forbids it.
  kResourceExhausted = 5,   // Out of memory or over the daemon's --max-memory cap.
  kFailedPrecondition = 6,  // Valid request in the wrong state (e.g. wrong dtype for a view).
  kProtocolError = 7,       // The peer sent something that is not the protocol.
  kInternal = 8,            // A bug or unexpected system error.
  kUnavailable = 9,         // Client side: the daemon could not be reached or hung up.
  kDeadlineExceeded = 10,   // A wait ran out (attach with a wait).
};

// The code's wire name, e.g. "NOT_FOUND".
constexpr std::string_view CodeName(Code code) {
  switch (code) {
    case Code::kOk:
      return "OK";
    case Code::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case Code::kNotFound:
      return "NOT_FOUND";
    case Code::kAlreadyExists:
      return "ALREADY_EXISTS";
    case Code::kPermissionDenied:
      return "PERMISSION_DENIED";
    case Code::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case Code::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case Code::kProtocolError:
      return "PROTOCOL_ERROR";
    case Code::kInternal:
      return "INTERNAL";
    case Code::kUnavailable:
      return "UNAVAILABLE";
    case Code::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
  }
  return "UNKNOWN";
}

inline constexpr int kMaxCode = static_cast<int>(Code::kDeadlineExceeded);

class [[nodiscard]] Status {
 public:
  // An OK status.
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  static Status InvalidArgument(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
  static Status NotFound(std::string m) { return {Code::kNotFound, std::move(m)}; }
  static Status AlreadyExists(std::string m) { return {Code::kAlreadyExists, std::move(m)}; }
  static Status PermissionDenied(std::string m) { return {Code::kPermissionDenied, std::move(m)}; }
  static Status ResourceExhausted(std::string m) {
    return {Code::kResourceExhausted, std::move(m)};
  }
  static Status FailedPrecondition(std::string m) {
    return {Code::kFailedPrecondition, std::move(m)};
  }
  static Status ProtocolError(std::string m) { return {Code::kProtocolError, std::move(m)}; }
  static Status Internal(std::string m) { return {Code::kInternal, std::move(m)}; }
  static Status Unavailable(std::string m) { return {Code::kUnavailable, std::move(m)}; }
  static Status DeadlineExceeded(std::string m) { return {Code::kDeadlineExceeded, std::move(m)}; }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

  // "OK", or "NOT_FOUND: no segment named 'x'".
  std::string ToString() const {
    std::string s(CodeName(code_));
    if (!message_.empty()) s.append(": ").append(message_);
    return s;
  }

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

// Either a T or a non-OK Status. Accessing the value of a failed Result is a programming error:
// it prints the status and aborts.
template <typename T>
class [[nodiscard]] Result {
  static_assert(!std::is_same_v<std::decay_t<T>, Status>, "use Status directly");

 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design.
  Result(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design.
    if (std::get<Status>(v_).ok()) v_ = Status::Internal("Result built from an OK status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  // OK when there is a value.
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

  T& value() & { return Check(), std::get<T>(v_); }
  const T& value() const& { return Check(), std::get<T>(v_); }
  T&& value() && { return Check(), std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

 private:
  void Check() const {
    if (!ok()) {
      std::fprintf(stderr, "shmbroker: value() of a failed Result: %s\n",
                   std::get<Status>(v_).ToString().c_str());
      std::abort();
    }
  }
  std::variant<T, Status> v_;
};

}  // namespace shmbroker
