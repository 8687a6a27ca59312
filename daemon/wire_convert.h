// A segment's metadata as the wire's SegmentInfo, and back: shared by replies to clients and by
// the fd store's metadata memfds.
#pragma once

#include "registry.h"
#include "shmbroker.pb.h"

namespace shmbroker::daemon {

// Everything that does not change over the segment's life (not attachments, not whether its
// creator is still connected).
void DescribeSegment(const Segment& s, wire::SegmentInfo* info);

SegmentSpec SpecFromWire(const wire::SegmentInfo& info);

}  // namespace shmbroker::daemon
