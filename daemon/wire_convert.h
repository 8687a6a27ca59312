// Every conversion between the wire's messages and the daemon's own types, in one place: segment
// metadata (for replies and for the fd store's metadata memfds), a create request's spec, access
// modes and purge selectors.
#pragma once

#include "registry.h"
#include "segment_entry.h"
#include "shmbroker.pb.h"

namespace shmbroker::daemon {

// Its spec, owner and state, not attachments nor whether its creator is still connected. (The
// fd store keeps this from create on; sealed is read back from the memfd's seals.)
void DescribeSegment(const SegmentEntry& s, wire::SegmentInfo* info);

SegmentSpec SpecFromWire(const wire::SegmentInfo& info);

// The spec a create request asks for (mode 0600 when absent; a ttl counts from `now_unix_ns`).
// INVALID_ARGUMENT for an order that is neither C nor F, an unknown lifetime or a ttl out of
// range; everything else is validated by the registry.
Result<SegmentSpec> SpecFromCreate(const wire::CreateRequest& req, std::int64_t now_unix_ns);

wire::Lifetime LifetimeToWire(Lifetime lifetime);
Result<Lifetime> LifetimeFromWire(int lifetime);

// INVALID_ARGUMENT for a value that is neither READ_ONLY nor READ_WRITE.
Result<Access> AccessFromWire(int access);
wire::Access AccessToWire(Access access);

PurgeSelector SelectorFromWire(const wire::PurgeRequest& req);

}  // namespace shmbroker::daemon
