#include "ledger.h"

#include <algorithm>

namespace shmbroker::daemon {

void Ledger::Charge(std::uint32_t uid, std::uint64_t bytes) {
  Usage& u = by_uid_[uid];
  u.bytes += bytes;
  ++u.segments;
  total_.bytes += bytes;
  ++total_.segments;
}

void Ledger::Unlinked(std::uint64_t bytes) {
  unlinked_.bytes += bytes;
  ++unlinked_.segments;
}

void Ledger::Release(std::uint32_t uid, std::uint64_t bytes, bool unlinked) {
  auto drop = [bytes](Usage& u) {
    u.bytes -= std::min(u.bytes, bytes);
    u.segments -= std::min<std::uint64_t>(u.segments, 1);
  };
  drop(total_);
  if (unlinked) drop(unlinked_);
  auto it = by_uid_.find(uid);
  if (it == by_uid_.end()) return;
  drop(it->second);
  if (it->second.segments == 0) by_uid_.erase(it);
}

Ledger::Usage Ledger::Of(std::uint32_t uid) const {
  auto it = by_uid_.find(uid);
  return it == by_uid_.end() ? Usage{} : it->second;
}

}  // namespace shmbroker::daemon
