#include "wire_convert.h"

namespace shmbroker::daemon {

void DescribeSegment(const Segment& s, wire::SegmentInfo* info) {
  const SegmentSpec& spec = s.spec();
  info->set_name(spec.name);
  info->set_dtype(spec.dtype);
  for (auto d : spec.shape) info->add_shape(d);
  info->set_order(spec.order == Order::kF ? wire::ORDER_F : wire::ORDER_C);
  info->set_nbytes(s.nbytes());
  info->mutable_attrs()->insert(spec.attrs.begin(), spec.attrs.end());
  info->set_uid(s.uid());
  info->set_gid(s.gid());
  info->set_creator_pid(s.creator_pid());
  info->set_created_unix_ns(s.created_unix_ns());
  info->set_mode(spec.mode);
}

SegmentSpec SpecFromWire(const wire::SegmentInfo& info) {
  SegmentSpec spec;
  spec.name = info.name();
  spec.dtype = info.dtype();
  spec.shape.assign(info.shape().begin(), info.shape().end());
  spec.order = info.order() == wire::ORDER_F ? Order::kF : Order::kC;
  spec.mode = info.mode();
  spec.attrs.insert(info.attrs().begin(), info.attrs().end());
  return spec;
}

}  // namespace shmbroker::daemon
