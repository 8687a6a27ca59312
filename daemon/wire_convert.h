// Every conversion between the wire's messages and the daemon's own types, in one place: segment
// metadata (for replies and for the fd store's metadata memfds), a create request's spec, access
// modes and purge selectors.
#pragma once

#include "registry.h"
#include "segment_entry.h"
#include "shmbroker.pb.h"

namespace shmbroker::daemon {

// Everything that does not change over the segment's life (not attachments, not whether its
// creator is still connected).
void DescribeSegment(const SegmentEntry& s, wire::SegmentInfo* info);

SegmentSpec SpecFromWire(const wire::SegmentInfo& info);

// The spec a create request asks for (mode 0600 when absent). INVALID_ARGUMENT for an order that
// is neither C nor F; everything else is validated by the registry.
Result<SegmentSpec> SpecFromCreate(const wire::CreateRequest& req);

// INVALID_ARGUMENT for a value that is neither READ_ONLY nor READ_WRITE.
Result<Access> AccessFromWire(int access);
wire::Access AccessToWire(Access access);

PurgeSelector SelectorFromWire(const wire::PurgeRequest& req);

}  // namespace shmbroker::daemon
