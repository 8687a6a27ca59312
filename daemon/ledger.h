// What memory the daemon holds, and for whom, until it is really released. A segment is charged
// to its owner when created and released only when its region is destroyed: when no name, no
// attachment, no connection that may still map it and no reply in flight refers to it. So an
// unlinked segment still in use counts against --max-memory, the owner's quotas and the stats
// until then, and a client that creates and unlinks without letting go runs into its own limits.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>

namespace shmbroker::daemon {

class Ledger {
 public:
  struct Usage {
    std::uint64_t bytes = 0;
    std::uint64_t segments = 0;
  };

  void Charge(std::uint32_t uid, std::uint64_t bytes);
  // A charged segment lost its name (unlink, purge) but is still in use.
  void Unlinked(std::uint64_t bytes);
  // Its memory is gone; `unlinked` says whether Unlinked() was called for it.
  void Release(std::uint32_t uid, std::uint64_t bytes, bool unlinked);

  Usage Of(std::uint32_t uid) const;
  // Everything charged, named or not.
  Usage total() const { return total_; }
  // Of it, what is unlinked but still in use.
  Usage unlinked() const { return unlinked_; }

 private:
  std::unordered_map<std::uint32_t, Usage> by_uid_;
  Usage total_, unlinked_;
};

// Charges `bytes` to `uid` for as long as it lives (a segment in a shared region holds one; a
// region of its own charges itself). Move-only.
class LedgerCharge {
 public:
  LedgerCharge(std::shared_ptr<Ledger> ledger, std::uint32_t uid, std::uint64_t bytes)
      : ledger_(std::move(ledger)), uid_(uid), bytes_(bytes) {
    ledger_->Charge(uid_, bytes_);
  }
  LedgerCharge(LedgerCharge&& o) noexcept
      : ledger_(std::move(o.ledger_)), uid_(o.uid_), bytes_(o.bytes_), unlinked_(o.unlinked_) {}
  LedgerCharge& operator=(LedgerCharge&&) = delete;
  ~LedgerCharge() {
    if (ledger_) ledger_->Release(uid_, bytes_, unlinked_);
  }
  void Unlinked() {
    if (unlinked_ || !ledger_) return;
    unlinked_ = true;
    ledger_->Unlinked(bytes_);
  }

 private:
  std::shared_ptr<Ledger> ledger_;
  std::uint32_t uid_;
  std::uint64_t bytes_;
  bool unlinked_ = false;
};

}  // namespace shmbroker::daemon
