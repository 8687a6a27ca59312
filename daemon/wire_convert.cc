#include "wire_convert.h"

#include "validate.h"

namespace shmbroker::daemon {

void DescribeSegment(const SegmentEntry& s, wire::SegmentInfo* info) {
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
  info->set_lifetime(LifetimeToWire(spec.lifetime));
  info->set_expires_unix_ns(spec.expires_unix_ns);
  info->set_sealed(s.sealed());
  info->set_in_flight(s.in_flight());
}

wire::Lifetime LifetimeToWire(Lifetime lifetime) {
  return static_cast<wire::Lifetime>(static_cast<int>(lifetime));
}

Result<Lifetime> LifetimeFromWire(int lifetime) {
  switch (lifetime) {
    case wire::PERSISTENT:
      return Lifetime::kPersistent;
    case wire::CONNECTION:
      return Lifetime::kConnection;
    case wire::REFCOUNT:
      return Lifetime::kRefcount;
    default:
      return Status::InvalidArgument("lifetime " + std::to_string(lifetime) +
                                     " is not PERSISTENT, CONNECTION or REFCOUNT");
  }
}

namespace {

Order OrderFromWire(int order) { return order == wire::ORDER_F ? Order::kF : Order::kC; }

}  // namespace

SegmentSpec SpecFromWire(const wire::SegmentInfo& info) {
  SegmentSpec spec;
  spec.name = info.name();
  spec.dtype = info.dtype();
  spec.shape.assign(info.shape().begin(), info.shape().end());
  spec.order = OrderFromWire(info.order());
  spec.mode = info.mode();
  spec.attrs.insert(info.attrs().begin(), info.attrs().end());
  // Checked by the registry when restored (an unknown lifetime is corrupt metadata).
  spec.lifetime = static_cast<Lifetime>(info.lifetime());
  spec.expires_unix_ns = info.expires_unix_ns();
  return spec;
}

Result<SegmentSpec> SpecFromCreate(const wire::CreateRequest& req, std::int64_t now_unix_ns) {
  if (req.order() != wire::ORDER_C && req.order() != wire::ORDER_F) {
    return Status::InvalidArgument("order must be C or F");
  }
  SegmentSpec spec;
  spec.name = req.name();
  spec.dtype = req.dtype();
  spec.shape.assign(req.shape().begin(), req.shape().end());
  spec.order = OrderFromWire(req.order());
  spec.mode = req.has_mode() ? req.mode() : 0600;
  spec.attrs.insert(req.attrs().begin(), req.attrs().end());
  auto lifetime = LifetimeFromWire(req.lifetime());
  if (!lifetime.ok()) return lifetime.status();
  spec.lifetime = *lifetime;
  if (req.has_ttl_ms()) {
    if (req.ttl_ms() == 0 || req.ttl_ms() > kMaxTtlMs) {
      return Status::InvalidArgument("ttl " + std::to_string(req.ttl_ms()) +
                                     " ms is out of range (1 ms to ten years)");
    }
    spec.expires_unix_ns = now_unix_ns + static_cast<std::int64_t>(req.ttl_ms()) * 1'000'000;
  }
  return spec;
}

Result<Access> AccessFromWire(int access) {
  if (access == wire::READ_ONLY) return Access::kReadOnly;
  if (access == wire::READ_WRITE) return Access::kReadWrite;
  return Status::InvalidArgument("access must be READ_ONLY or READ_WRITE");
}

wire::Access AccessToWire(Access access) {
  return access == Access::kReadWrite ? wire::READ_WRITE : wire::READ_ONLY;
}

PurgeSelector SelectorFromWire(const wire::PurgeRequest& req) {
  PurgeSelector sel;
  sel.patterns.assign(req.patterns().begin(), req.patterns().end());
  sel.orphans = req.orphans();
  if (req.has_older_than_seconds()) sel.older_than_seconds = req.older_than_seconds();
  if (req.has_owner_uid()) sel.owner_uid = req.owner_uid();
  sel.unattached = req.unattached();
  sel.all = req.all();
  return sel;
}

}  // namespace shmbroker::daemon
