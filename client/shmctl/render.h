// What shmctl prints, as pure functions of what the daemon said: text tables and JSON documents.
// No I/O and no clock: the caller passes `now` and a way to name users, so every output can be
// unit-tested.
#pragma once

#include <shmbroker/client.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace shmbroker::shmctl {

// A user's name for a uid (the uid as text when it has none).
using UserNamer = std::function<std::string(std::uint32_t uid)>;

// `namer`, asked once per uid. A lookup reads the user database (with NSS files: an open, reads
// and a close of /etc/passwd each time), and a list of 100,000 segments names the same few owners
// over and over. Not thread-safe.
UserNamer CachingUserNamer(UserNamer namer);

struct RenderContext {
  std::chrono::system_clock::time_point now;
  UserNamer user_name;
  bool terminal = false;     // stdout is a terminal: tables end with a totals line.
  bool bold_header = false;  // The header row in bold (a terminal, and neither NO_COLOR nor
                             // TERM=dumb).
};

// A left-aligned table, one line per row; the last column is not padded.
std::string Table(const std::vector<std::vector<std::string>>& rows, bool bold_header);

// `shmctl list`: one row per segment (`long_format` adds pid, creation time and attributes).
std::string ListText(const std::vector<SegmentInfo>& segments, bool long_format,
                     const RenderContext& ctx);
// `shmctl list -q`: the names, one per line.
std::string ListNames(const std::vector<SegmentInfo>& segments);
std::string ListJson(const std::vector<SegmentInfo>& segments, const RenderContext& ctx);

// `shmctl list --unlinked`: unlinked segments still in use and the processes holding each.
std::string UnlinkedText(const std::vector<SegmentInfo>& segments, const RenderContext& ctx);
std::string UnlinkedJson(const std::vector<SegmentInfo>& segments, const RenderContext& ctx);

// `shmctl info NAME`.
std::string InfoText(const SegmentInfo& s, const RenderContext& ctx);
std::string InfoJson(const SegmentInfo& s, const RenderContext& ctx);

// `shmctl purge`.
std::string PurgeText(const PurgeResult& r, bool dry_run);
std::string PurgeJson(const PurgeResult& r, bool dry_run, const RenderContext& ctx);

// `shmctl stats`.
// "released 1.0 GiB of the warm pool (2 memfds)"; JSON
// {"bytes_released":..,"segments_released":..}.
std::string TrimText(const TrimResult& t);
std::string TrimJson(const TrimResult& t);

std::string StatsText(const DaemonStats& s, const RenderContext& ctx);
std::string StatsJson(const DaemonStats& s, const RenderContext& ctx);
// `shmctl stats --prometheus`: every figure as Prometheus text exposition format 0.0.4 (for
// node_exporter's textfile collector): names prefixed shmbroker_, each family with HELP and TYPE.
std::string StatsPrometheus(const DaemonStats& s, const RenderContext& ctx);

}  // namespace shmbroker::shmctl
