// libFuzzer target: a restarted daemon rebuilding its registry from systemd's fd store
// (FdStore::Restore), i.e. decoding the journal (journal.h) and older per-segment metadata memfds
// (store.proto), matching them to the segments' memory, and then serving what it restored. The
// decoding is not callable on its own, so the input becomes the fds Restore is handed, as
// TakeListenFds would hand them over.
//
// Input: [n: 1 byte] then n % 16 entries, then [older_than: u32 little-endian].
//   An entry: [flags: 1 byte], then [id: 1 byte] unless bit 1 (or [len: 1 byte][len bytes of
//   name] with it), then for data [size: u32 little-endian] or for metadata [len: u16][len bytes].
//   flags bit 0  0: data, named "seg-<id>"; 1: metadata, named "meta-<id>".
//         bit 1  the name is in the input instead.
//         bit 2  no descriptor (the name came without an open fd).
//         bit 3  data: not sealed against grow and shrink.
//         bit 4  data: not a memfd (a pipe).
//         bit 5  a journal, named "journal-<id>" (bit 0 ignored), its bytes: [n: 1 byte] then n
//                records [kind: 1 byte][id: 1 byte][len: u16][len bytes], encoded as the daemon
//                encodes them (kind bit 0: a delete, else a put of the bytes; bit 1: the record's
//                bytes go in raw instead, as if torn or corrupt).
//   Data is a memfd of size % 1 MiB bytes, sealed as CreateSegmentMemfd seals it; metadata is a
//   memfd holding the bytes, sealed as FdStore writes it.
// After Restore the registry is used as clients would use it: root lists everything, stats,
// attaches each segment both ways and purges what is older than older_than seconds (a dry run),
// then everything.
//
// Checked beyond the sanitizers: the registry holds exactly the segments Restore counts, each
// with memory of its size; every reply passes CheckReply; nothing is left open afterwards.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "fd_store.h"
#include "fuzz_support.h"
#include "journal.h"
#include "region.h"
#include "registry.h"
#include "request_handler.h"
#include "systemd.h"

namespace shmbroker::fuzz {
namespace {

using daemon::ListenFd;
using daemon::Outcome;

constexpr std::size_t kMaxDataBytes = 1 << 20;

// Restore tells systemd to drop what it skips: the messages go to a socket nobody listens on.
daemon::Notifier& NowhereNotifier() {
  static std::unique_ptr<daemon::Notifier> notifier = [] {
    std::string address = "@shmbroker-fuzz-nobody-" + std::to_string(::getpid());
    ::setenv("NOTIFY_SOCKET", address.c_str(), 1);
    auto n = daemon::Notifier::FromEnvironment();
    ::unsetenv("NOTIFY_SOCKET");
    FUZZ_CHECK(n != nullptr, "no notifier");
    return n;
  }();
  return *notifier;
}

UniqueFd Memfd(const char* label) {
  return UniqueFd(::memfd_create(label, MFD_CLOEXEC | MFD_ALLOW_SEALING));
}

UniqueFd DataFd(std::uint8_t flags, std::uint32_t size) {
  if (flags & 16) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return {};
    ::close(p[1]);
    return UniqueFd(p[0]);
  }
  UniqueFd fd = Memfd("shmbroker-fuzz:data");
  FUZZ_CHECK(::ftruncate(fd.get(), static_cast<off_t>(size % kMaxDataBytes)) == 0, "ftruncate");
  if (!(flags & 8)) ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
  return fd;
}

UniqueFd JournalFd(Input& in) {
  UniqueFd fd = daemon::Journal::Make();
  FUZZ_CHECK(fd, "cannot make a journal");
  std::uint64_t tail = daemon::Journal::kMagic.size();
  std::size_t n = in.U8();
  for (std::size_t i = 0; i < n && !in.empty(); ++i) {
    std::uint8_t kind = in.U8();
    std::uint64_t id = in.U8();
    auto bytes = in.Bytes(in.U16());
    std::string_view payload(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    std::string record = kind & 2   ? std::string(payload)
                         : kind & 1 ? daemon::Journal::EncodeDelete(id)
                                    : daemon::Journal::EncodePut(id, payload);
    FUZZ_CHECK(daemon::Journal::Append(fd.get(), tail, record), "cannot append to a journal");
  }
  return fd;
}

UniqueFd MetaFd(std::span<const std::byte> bytes) {
  UniqueFd fd = Memfd("shmbroker-fuzz:meta");
  FUZZ_CHECK(::write(fd.get(), bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()),
             "write");
  ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
  return fd;
}

std::vector<ListenFd> Entries(Input& in) {
  std::vector<ListenFd> fds;
  std::size_t n = in.U8() % 16;
  for (std::size_t i = 0; i < n && !in.empty(); ++i) {
    std::uint8_t flags = in.U8();
    bool meta = flags & 1;
    bool journal = flags & 32;
    ListenFd lf;
    if (flags & 2) {
      auto name = in.Bytes(in.U8());
      lf.name.assign(reinterpret_cast<const char*>(name.data()), name.size());
    } else {
      lf.name = (journal ? "journal-" : meta ? "meta-" : "seg-") + std::to_string(in.U8());
    }
    lf.fd = journal ? JournalFd(in) : meta ? MetaFd(in.Bytes(in.U16())) : DataFd(flags, in.U32());
    FUZZ_CHECK(lf.fd, "cannot make a memfd");
    if (flags & 4) lf.fd.reset();
    fds.push_back(std::move(lf));
  }
  return fds;
}

// The restored registry in use: root lists, stats and attaches every segment, then purges.
void Serve(daemon::Registry& registry, std::uint32_t older_than) {
  daemon::RequestHandler handler(registry, {"0.0.0-fuzz", "/run/shmbroker/fuzz.sock", 1});
  daemon::Session root;
  root.id = 1;
  root.creds = {0, 0, static_cast<std::uint32_t>(::getpid()), {0}};
  handler.Opened(root);
  auto send = [&](const wire::Request& r) {
    std::string bytes = r.SerializeAsString();
    Outcome out = handler.Handle(root, std::as_bytes(std::span(bytes)));
    CheckReply(out);
    return out;
  };
  wire::Request r;
  r.mutable_hello()->set_protocol_version(wire::PROTOCOL_VERSION_CURRENT);
  FUZZ_CHECK(send(r).reply.code() == wire::OK, "hello refused");
  r.mutable_list();
  Outcome list = send(r);
  FUZZ_CHECK(list.reply.code() == wire::OK, "list failed");
  for (const auto& info : list.reply.list().segments()) {
    r.mutable_stat()->set_name(info.name());
    FUZZ_CHECK(send(r).reply.code() == wire::OK, "a listed segment that stat cannot find");
    for (auto access : {wire::READ_ONLY, wire::READ_WRITE}) {
      r.mutable_attach()->set_name(info.name());
      r.mutable_attach()->set_access(access);
      send(r);
    }
  }
  r.mutable_purge()->set_older_than_seconds(older_than);
  r.mutable_purge()->set_dry_run(true);
  send(r);
  r.mutable_purge()->Clear();
  r.mutable_purge()->set_all(true);
  FUZZ_CHECK(send(r).reply.code() == wire::OK, "root cannot purge everything");
  FUZZ_CHECK(registry.size() == 0, "segments left after purging all");
  handler.Closed(root);
}

}  // namespace
}  // namespace shmbroker::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  shmbroker::fuzz::InstallLogger();
  shmbroker::fuzz::NowhereNotifier();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace shmbroker;
  std::size_t fds_before = fuzz::OpenFds();
  {
    fuzz::Input in(data, size);
    std::vector<daemon::ListenFd> fds = fuzz::Entries(in);
    std::uint32_t older_than = in.U32();
    daemon::Registry registry;
    daemon::FdStore store(fuzz::NowhereNotifier());
    std::size_t restored = store.Restore(fds, registry);
    FUZZ_CHECK(registry.size() == restored, "the registry does not hold what Restore counts");
    Status listed = registry.List("", "", [](const daemon::SegmentEntry& s) {
      struct stat st {};
      FUZZ_CHECK(
          ::fstat(s.memfd(), &st) == 0 && static_cast<std::uint64_t>(st.st_size) == s.nbytes(),
          "a restored segment whose memory is not its size");
      return true;
    });
    FUZZ_CHECK(listed.ok(), "cannot list the registry");
    fuzz::Serve(registry, older_than);
  }
  FUZZ_CHECK(daemon::Region::open_fds() == 0, "a region outlived its registry");
  FUZZ_CHECK(fuzz::OpenFds() == fds_before, "the input left descriptors open");
  return 0;
}
