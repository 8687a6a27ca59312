#include "journal.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "memfd.h"

namespace shmbroker::daemon {
namespace {

constexpr std::size_t kHeader = 8;  // Length and checksum.

std::uint32_t Fnv1a(std::string_view bytes) {
  std::uint32_t h = 2166136261u;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 16777619u;
  }
  return h;
}

void PutU32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}

std::uint64_t GetLe(const char* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= std::uint64_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return v;
}

bool WriteAll(int fd, std::string_view bytes, std::uint64_t at) {
  while (!bytes.empty()) {
    ssize_t n = ::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(at));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;
      return false;
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
    at += static_cast<std::uint64_t>(n);
  }
  return true;
}

std::string Encode(Journal::Kind kind, std::uint64_t id, std::string_view payload) {
  std::string body;
  body.reserve(9 + payload.size());
  body.push_back(static_cast<char>(kind));
  for (int i = 0; i < 8; ++i) body.push_back(static_cast<char>(id >> (8 * i)));
  body.append(payload);
  std::string out;
  out.reserve(kHeader + body.size());
  PutU32(out, static_cast<std::uint32_t>(body.size()));
  PutU32(out, Fnv1a(body));
  out += body;
  return out;
}

}  // namespace

UniqueFd Journal::Make() {
  UniqueFd fd(MemfdCreate("shmbroker-journal"));
  if (fd && !WriteAll(fd.get(), kMagic, 0)) return {};
  return fd;
}

std::string Journal::EncodePut(std::uint64_t id, std::string_view stored_segment) {
  return Encode(Kind::kPut, id, stored_segment);
}

std::string Journal::EncodeDelete(std::uint64_t id) { return Encode(Kind::kDelete, id, {}); }

bool Journal::Append(int fd, std::uint64_t& tail, std::string_view record) {
  if (!WriteAll(fd, record, tail)) return false;
  tail += record.size();
  return true;
}

Result<Journal::Contents> Journal::Read(int fd, std::uint64_t max_bytes) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Status::InvalidArgument(std::strerror(errno));
  if (st.st_size < static_cast<off_t>(kMagic.size())) {
    return Status::InvalidArgument("too short to be a journal");
  }
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes) {
    return Status::InvalidArgument("larger than " + std::to_string(max_bytes) + " bytes");
  }
  std::string bytes(static_cast<std::size_t>(st.st_size), '\0');
  for (std::size_t done = 0; done < bytes.size();) {
    ssize_t n = ::pread(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Status::InvalidArgument("unreadable");
    done += static_cast<std::size_t>(n);
  }
  if (std::string_view(bytes).substr(0, kMagic.size()) != kMagic) {
    return Status::InvalidArgument("not a journal (wrong magic)");
  }
  Contents c;
  std::size_t at = kMagic.size();
  while (at < bytes.size()) {
    if (bytes.size() - at < kHeader) {
      c.problem = "a record header cut short at byte " + std::to_string(at);
      break;
    }
    std::uint64_t length = GetLe(bytes.data() + at, 4);
    std::uint32_t sum = static_cast<std::uint32_t>(GetLe(bytes.data() + at + 4, 4));
    if (length == 0 || length > kMaxBody || length > bytes.size() - at - kHeader) {
      c.problem = "a record cut short or of a bad length at byte " + std::to_string(at);
      break;
    }
    std::string_view body(bytes.data() + at + kHeader, length);
    if (Fnv1a(body) != sum) {
      c.problem = "a record failing its checksum at byte " + std::to_string(at);
      break;
    }
    auto kind = static_cast<Kind>(body[0]);
    std::uint64_t id = body.size() >= 9 ? GetLe(body.data() + 1, 8) : 0;
    if (kind == Kind::kDelete && body.size() == 9) {
      c.live.erase(id);
    } else if (kind == Kind::kPut && body.size() > 9) {
      c.live[id] = std::string(body.substr(9));
    } else {
      c.problem = "a record of unknown kind at byte " + std::to_string(at);
      break;
    }
    at += kHeader + length;
  }
  c.end = at;
  return c;
}

}  // namespace shmbroker::daemon
