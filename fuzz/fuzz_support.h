// What the fuzz targets share: reading a framed input front to back, checks that abort (so
// libFuzzer keeps the input), the checks every reply must pass, counting open descriptors, and
// logging that formats every line (client-chosen strings go through the log path too) without
// printing it.
#pragma once

#include <dirent.h>
#include <fcntl.h>

#include <google/protobuf/stubs/logging.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>

#include "session.h"
#include "shmbroker.pb.h"
#include "wire.h"

namespace shmbroker::fuzz {

// Aborts with a message when `cond` is false: an invariant of the daemon broke. The sanitizers
// catch memory errors and undefined behaviour; this catches wrong answers.
#define FUZZ_CHECK(cond, what)                                                                 \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__, what, #cond); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

// The fuzz input, read from the front (so that seeds are easy to write). Past the end every read
// yields zeros, or no bytes.
class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  bool empty() const { return pos_ == size_; }
  std::uint8_t U8() { return empty() ? 0 : data_[pos_++]; }
  std::uint16_t U16() { return static_cast<std::uint16_t>(U8() | (U8() << 8)); }
  std::uint32_t U32() { return U16() | (static_cast<std::uint32_t>(U16()) << 16); }
  // The next `n` bytes, or those left when fewer.
  std::span<const std::byte> Bytes(std::size_t n) {
    std::size_t take = n < size_ - pos_ ? n : size_ - pos_;
    auto out = std::as_bytes(std::span(data_ + pos_, take));
    pos_ += take;
    return out;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

// SHMBROKER_FUZZ_LOG=1: print the log and every reply, to follow one input.
inline bool Verbose() {
  static const bool verbose = [] {
    const char* v = std::getenv("SHMBROKER_FUZZ_LOG");
    return v != nullptr && std::string(v) == "1";
  }();
  return verbose;
}

// Every log line down to debug is formatted, as in a daemon run with --log-level debug, and
// dropped unless Verbose(); so are protobuf's complaints about the strings it parses.
inline void InstallLogger() {
  if (!Verbose()) google::protobuf::SetLogHandler(nullptr);
  spdlog::sink_ptr sink;
  if (Verbose()) {
    sink = std::make_shared<spdlog::sinks::stderr_sink_st>();
  } else {
    sink = std::make_shared<spdlog::sinks::null_sink_st>();
  }
  auto logger = std::make_shared<spdlog::logger>("fuzz", std::move(sink));
  logger->set_level(spdlog::level::debug);
  spdlog::set_default_logger(std::move(logger));
}

// What every reply must be, as Connection would send it and a client read it: it serializes,
// fits in a reply packet and parses again (a proto3 string that is not UTF-8 fails the client's
// parse); its fds are few enough for one packet, open, and held alive by the reply; an attach
// reply is an OK one, with ids that are never 0 and fd_attached exactly when it carries an fd.
inline void CheckReply(const daemon::Outcome& out) {
  if (Verbose()) {
    spdlog::debug("reply: {} ({} fds{})", out.reply.ShortDebugString(), out.fds.size(),
                  out.close_connection ? ", closes the connection" : "");
  }
  std::string bytes;
  FUZZ_CHECK(out.reply.SerializeToString(&bytes), "a reply that does not serialize");
  FUZZ_CHECK(bytes.size() <= wire::kMaxReplyBytes, "a reply larger than a reply packet");
  wire::Reply parsed;
  FUZZ_CHECK(parsed.ParseFromString(bytes), "a reply that a client cannot parse");
  FUZZ_CHECK(out.fds.size() <= wire::kMaxFdsPerPacket, "more fds than one packet carries");
  FUZZ_CHECK(out.fds.size() == out.pins.size(), "fds without a pin holding them open");
  for (int fd : out.fds) FUZZ_CHECK(::fcntl(fd, F_GETFD) >= 0, "a reply fd that is not open");
  if (out.reply.has_attach()) {
    const auto& a = out.reply.attach();
    FUZZ_CHECK(out.reply.code() == wire::OK, "an attach body on an error");
    FUZZ_CHECK(a.attachment_id() != 0, "attachment id 0");
    FUZZ_CHECK(a.mapping().region_id() != 0, "region id 0");
    FUZZ_CHECK(a.mapping().fd_attached() == !out.fds.empty(), "fd_attached does not match fds");
  }
}

// Descriptors this process has open now: an input must leave as many as it found.
inline std::size_t OpenFds() {
  std::size_t n = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  while (::readdir(dir) != nullptr) ++n;
  ::closedir(dir);
  return n;  // With ".", ".." and the directory's own fd: the same offset every time.
}

}  // namespace shmbroker::fuzz
