"""What ``python -m shmbroker`` prints: shmctl's text tables, JSON documents and Prometheus text,
byte for byte, as pure functions of what the daemon said (the twin of client/shmctl/render.cc,
format.cc and common/units.cc, common/text.cc). No I/O and no clock: the caller passes a
:class:`Context`.
"""

import dataclasses
import datetime
import time
import typing

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class Context:
    now_ns: int  # the time of the output, in nanoseconds since the epoch
    user_name: typing.Callable  # uid -> name (the uid as text when it has none)
    terminal: bool = False  # stdout is a terminal: tables end with a totals line
    bold_header: bool = False  # header row in bold (a terminal, neither NO_COLOR nor TERM=dumb)


def now_ns():
    return time.time_ns()


# --- Units (common/units.cc) ---------------------------------------------------------------------


def human_bytes(n):
    if n < 1024:
        return f"{n} B"
    units = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    v = float(n) / 1024
    u = 0
    # The unit is chosen after rounding to one decimal: 1048575 is "1.0 MiB", not "1024.0 KiB".
    while v >= 1023.95 and u < 5:
        v /= 1024
        u += 1
    return "%.1f %s" % (v, units[u])


def human_age(seconds):
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s}s"
    if s < 120 * 60:
        return f"{s // 60}m"
    if s < 48 * 3600:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def unix_ns(t):
    """Nanoseconds since the epoch of an aware datetime."""
    return (t - _EPOCH) // datetime.timedelta(microseconds=1) * 1000


def unix_millis(ns):
    return ns // 1_000_000  # floor, also before 1970, as shmctl


def iso8601(ns):
    ms = unix_millis(ns)
    d = _EPOCH + datetime.timedelta(milliseconds=ms)
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
        f".{ms % 1000:03d}Z"
    )


def mode_string(mode):
    return "%04o" % (mode & 0o7777)


def shape_string(shape):
    inner = ", ".join(str(d) for d in shape)
    return "(" + inner + ("," if len(shape) == 1 else "") + ")"


# --- Text made safe to print (common/text.cc) -----------------------------------------------------


def _is_format_control(cp):
    return (
        0x200B <= cp <= 0x200F
        or 0x2028 <= cp <= 0x202E
        or 0x2060 <= cp <= 0x2069
        or cp in (0xFEFF, 0x061C)
    )


def printable(text):
    """``text`` with control characters (as \\xNN of their UTF-8 bytes), invisible format
    characters (as \\u{NNNN}) and the backslash escaped, as shmctl prints client strings."""
    out = []
    for c in text:
        cp = ord(c)
        if c == "\\":
            out.append("\\\\")
        elif 0x20 <= cp < 0x7F or (cp >= 0xA0 and not _is_format_control(cp)):
            if 0xD800 <= cp <= 0xDFFF:  # not UTF-8 (undecodable bytes of a command line)
                out.append("\\x%02x" % (cp & 0xFF))
            else:
                out.append(c)
        elif cp >= 0xA0:
            out.append("\\u{%04x}" % cp)
        else:  # C0, DEL, C1: each UTF-8 byte
            out.extend("\\x%02x" % b for b in c.encode("utf-8"))
    return "".join(out)


def _bytes_len(s):
    return len(s.encode("utf-8", "surrogateescape"))


def _by_bytes(d):
    """Items of ``d`` in the byte order of their keys (as a C++ std::map<std::string, ...>)."""
    return sorted(d.items(), key=lambda kv: kv[0].encode("utf-8", "surrogateescape"))


# --- JSON (format.cc) ----------------------------------------------------------------------------


def json_string(s):
    out = ['"']
    for c in s:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20:
            out.append("\\u%04x" % ord(c))
        else:
            out.append(c)  # UTF-8 passes through as is
    out.append('"')
    return "".join(out)


def to_json(v):
    """One compact JSON value: ints as integers, floats with three decimals (as shmctl)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "%.3f" % v
    if isinstance(v, str):
        return json_string(v)
    if isinstance(v, dict):
        return "{" + ",".join(json_string(k) + ":" + to_json(x) for k, x in v.items()) + "}"
    return "[" + ",".join(to_json(x) for x in v) + "]"


def prometheus_label_value(s):
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# --- Tables --------------------------------------------------------------------------------------


def table(rows, bold_header):
    """Left-aligned columns two spaces apart (widths in bytes, as shmctl); the last column is
    not padded."""
    width = []
    for r in rows:
        width.extend([0] * (len(r) - len(width)))
        for i, cell in enumerate(r):
            width[i] = max(width[i], _bytes_len(cell))
    out = []
    for n, r in enumerate(rows):
        line = "".join(
            cell + (" " * (width[i] - _bytes_len(cell) + 2) if i + 1 < len(r) else "")
            for i, cell in enumerate(r)
        )
        if n == 0 and bold_header:
            line = "\033[1m" + line + "\033[0m"
        out.append(line + "\n")
    return "".join(out)


def _plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


def _age(info, ctx):
    # Whole seconds, truncated toward zero (as std::chrono::duration_cast).
    ns = ctx.now_ns - unix_ns(info.created)
    return ns // 10**9 if ns >= 0 else -(-ns // 10**9)


def _expires(info, ctx):
    # "in 5m" (or "due" once past) when a ttl unlinks it, "-" when nothing does.
    if info.expires is None:
        return "-"
    ns = unix_ns(info.expires) - ctx.now_ns
    left = ns // 10**9 if ns >= 0 else -(-ns // 10**9)
    return "due" if left <= 0 else "in " + human_age(left)


def _attrs_string(attrs):
    s = ",".join(printable(k) + "=" + printable(v) for k, v in _by_bytes(attrs))
    return s or "-"


def _dtype(info):
    return info.dtype.str  # the daemon's type string: it keeps only exact NumPy ones


# --- list, info, purge ---------------------------------------------------------------------------


def list_text(segments, long_format, ctx):
    rows = [["NAME", "DTYPE", "SHAPE", "SIZE", "OWNER", "MODE", "LIFETIME", "EXPIRES", "SEALED",
             "ATTACHED", "AGE"]]
    if long_format:
        rows[0] += ["PID", "CREATED", "ATTRS"]
    for s in segments:
        row = [
            printable(s.name),
            printable(_dtype(s)),
            shape_string(s.shape),
            human_bytes(s.nbytes),
            ctx.user_name(s.uid),
            mode_string(s.mode),
            s.lifetime,
            _expires(s, ctx),
            "yes" if s.sealed else "-",
            str(s.attachments),
            human_age(_age(s, ctx)),
        ]
        if long_format:
            row += [str(s.creator_pid), iso8601(unix_ns(s.created)), _attrs_string(s.attrs)]
        rows.append(row)
    out = table(rows, ctx.bold_header)
    if ctx.terminal:
        total = sum(s.nbytes for s in segments)
        out += _plural(len(segments), "segment") + ", " + human_bytes(total) + "\n"
    return out


def list_names(segments):
    return "".join(printable(s.name) + "\n" for s in segments)


def _segment_json(s, ctx, with_holders=False):
    created = unix_ns(s.created)
    age = (ctx.now_ns - created) / 1e9
    d = {
        "name": s.name,
        "dtype": _dtype(s),
        "shape": list(s.shape),
        "order": "F" if s.order == "F" else "C",
        "nbytes": s.nbytes,
        "owner": ctx.user_name(s.uid),
        "uid": s.uid,
        "gid": s.gid,
        "mode": mode_string(s.mode),
        "attachments": s.attachments,
        "creator_pid": s.creator_pid,
        "creator_connected": s.creator_connected,
        "created": iso8601(created),
        "created_unix": unix_millis(created) / 1000,
        "age_seconds": max(age, 0.0),
        "lifetime": s.lifetime,
        "expires": iso8601(unix_ns(s.expires)) if s.expires is not None else None,
        "expires_unix": unix_millis(unix_ns(s.expires)) / 1000 if s.expires is not None else None,
        "sealed": s.sealed,
        "in_flight": s.in_flight,
        "attrs": dict(_by_bytes(s.attrs)),
    }
    if with_holders:
        d["holders"] = [
            {
                "pid": h.pid,
                "uid": h.uid,
                "user": ctx.user_name(h.uid),
                "client": h.client_name,
                "attachments": h.attachments,
                "writable": h.writable,
            }
            for h in s.holders
        ]
        d["holders_truncated"] = s.holders_truncated
    return d


def list_json(segments, ctx):
    return to_json({"segments": [_segment_json(s, ctx) for s in segments]}) + "\n"


def unlinked_text(segments, ctx):
    rows = [["NAME", "SIZE", "OWNER", "AGE", "HELD BY"]]
    for s in segments:
        held = ", ".join(
            f"pid {h.pid} '{printable(h.client_name)}' ("
            + ("mapped" if h.attachments == 0 else str(h.attachments))
            + ")"
            for h in s.holders
        )
        if s.holders_truncated:
            held += ", ..."
        rows.append(
            [
                printable(s.name),
                human_bytes(s.nbytes),
                ctx.user_name(s.uid),
                human_age(_age(s, ctx)),
                held or "-",
            ]
        )
    out = table(rows, ctx.bold_header)
    if ctx.terminal:
        total = sum(s.nbytes for s in segments)
        out += f"{_plural(len(segments), 'unlinked segment')} in use, {human_bytes(total)}\n"
    return out


def unlinked_json(segments, ctx):
    return to_json({"unlinked": [_segment_json(s, ctx, True) for s in segments]}) + "\n"


def info_text(s, ctx):
    rows = [
        ["name:", printable(s.name)],
        ["dtype:", printable(_dtype(s))],
        ["shape:", shape_string(s.shape)],
        ["order:", "F" if s.order == "F" else "C"],
        ["size:", f"{human_bytes(s.nbytes)} ({s.nbytes} bytes)"],
        ["owner:", f"{ctx.user_name(s.uid)} (uid {s.uid}, gid {s.gid})"],
        ["mode:", mode_string(s.mode)],
        ["lifetime:", s.lifetime],
        [
            "expires:",
            f"{iso8601(unix_ns(s.expires))} ({_expires(s, ctx)})" if s.expires is not None else "-",
        ],
        ["sealed:", "yes" if s.sealed else "no"],
        ["attached:", str(s.attachments) + (f" (+{s.in_flight} in flight)" if s.in_flight else "")],
        ["creator:", f"pid {s.creator_pid} ({'connected' if s.creator_connected else 'gone'})"],
        ["created:", f"{iso8601(unix_ns(s.created))} ({human_age(_age(s, ctx))} ago)"],
    ]
    rows += [["attr " + printable(k) + ":", printable(v)] for k, v in _by_bytes(s.attrs)]
    if not s.holders:
        rows.append(["held by:", "-"])
    for i, h in enumerate(s.holders):
        rw = f" ({h.writable} read-write)" if h.writable > 0 else ""
        rows.append(
            [
                "held by:" if i == 0 else "",
                f"pid {h.pid}, {ctx.user_name(h.uid)}, '{printable(h.client_name)}': "
                f"{_plural(h.attachments, 'attachment')}{rw}",
            ]
        )
    if s.holders_truncated:
        rows.append(["", "... and more"])
    return table(rows, False)


def info_json(s, ctx):
    return to_json(_segment_json(s, ctx, True)) + "\n"


def purge_text(r, dry_run):
    verb = "would remove" if dry_run else "removed"
    out = [f"{verb} {printable(name)} ({human_bytes(nbytes)})\n" for name, nbytes, _ in r.removed]
    if r.truncated:
        out.append(f"... and {r.removed_count - len(r.removed)} more\n")
    out.append(
        f"{verb} {_plural(r.removed_count, 'segment')}, {human_bytes(r.bytes_freed)}"
        + ("" if dry_run else " freed")
        + "\n"
    )
    if r.skipped_not_owner > 0:
        out.append(
            f"skipped {_plural(r.skipped_not_owner, 'matching segment')} owned by other users "
            "(only root may remove them)\n"
        )
    return "".join(out)


def purge_json(r, dry_run, ctx):
    return (
        to_json(
            {
                "dry_run": dry_run,
                "removed": [
                    {"name": name, "nbytes": nbytes, "owner": ctx.user_name(uid), "uid": uid}
                    for name, nbytes, uid in r.removed
                ],
                "truncated": r.truncated,
                "removed_count": r.removed_count,
                "bytes_freed": r.bytes_freed,
                "skipped_not_owner": r.skipped_not_owner,
            }
        )
        + "\n"
    )


# --- stats ---------------------------------------------------------------------------------------


def _handshake_ms(limits):
    return round(limits.handshake_timeout * 1000)


def _uptime(s, ctx):
    return (ctx.now_ns - unix_ns(s.started)) / 1e9


def stats_text(s, ctx):
    def counters(m):
        # Text shows what happened; --json has every counter.
        return " ".join(f"{k}={v}" for k, v in _by_bytes(m) if v != 0) or "none"

    def none_or(v, show):
        return "no cap" if v == 0 else show(v)

    lim = s.limits
    rows = [
        ["version:", s.version],
        ["pid:", str(s.pid)],
        ["socket:", s.socket_path],
        ["uptime:", f"{human_age(int(_uptime(s, ctx)))} (since {iso8601(unix_ns(s.started))})"],
        ["segments:", str(s.segments)],
        [
            "memory:",
            f"{human_bytes(s.bytes_held)} held, cap "
            + ("none" if s.max_memory == 0 else human_bytes(s.max_memory)),
        ],
        [
            "unlinked:",
            f"{_plural(s.unlinked_segments, 'segment')} ({human_bytes(s.unlinked_bytes)}) "
            "still in use",
        ],
        [
            "regions:",
            f"{s.shared_regions} shared, holding {human_bytes(s.shared_region_resident_bytes)} "
            f"({human_bytes(s.shared_region_free_bytes)} free, kept for reuse)",
        ],
        ["2M pages:", f"{human_bytes(s.huge_page_bytes)} of segments on 2 MiB pages"],
        [
            "lifetime:",
            f"unlinked by the daemon: {counters(s.auto_unlinked)}; "
            f"{s.tickets_in_flight} tickets in flight ({s.tickets_lapsed} lapsed); "
            f"{s.waiters} attaches waiting",
        ],
        [
            "pool:",
            "off"
            if s.pool_max_bytes == 0
            else f"{human_bytes(s.pool_bytes)} in {_plural(s.pool_segments, 'memfd')}, at most "
            f"{human_bytes(s.pool_max_bytes)}; reused {s.pool_reused} times, released "
            f"{human_bytes(s.pool_released_bytes)}",
        ],
        ["clients:", str(s.clients)],
        [
            "limits:",
            f"per user {none_or(lim.max_memory_per_user, human_bytes)} in "
            f"{none_or(lim.max_segments_per_user, str)} segments, "
            f"{lim.max_connections_per_user} of {lim.max_connections} connections; "
            f"{lim.max_attachments_per_connection} attachments per connection; "
            f"handshake {_handshake_ms(lim)} ms; fds {lim.fd_limit} "
            f"({lim.fd_reserve} kept for root)",
        ],
        ["requests:", counters(s.requests)],
        ["errors:", counters(s.errors)],
        ["refused:", counters(s.refusals)],
        ["log:", f"{s.log_lines_dropped} lines dropped"],
    ]
    return table(rows, False)


def stats_json(s, ctx):
    lim = s.limits
    return (
        to_json(
            {
                "version": s.version,
                "pid": s.pid,
                "socket": s.socket_path,
                "started": iso8601(unix_ns(s.started)),
                "uptime_seconds": _uptime(s, ctx),
                "segments": s.segments,
                "bytes_held": s.bytes_held,
                "max_memory": s.max_memory,
                "clients": s.clients,
                "unlinked_segments": s.unlinked_segments,
                "unlinked_bytes": s.unlinked_bytes,
                "log_lines_dropped": s.log_lines_dropped,
                "shared_regions": s.shared_regions,
                "shared_region_resident_bytes": s.shared_region_resident_bytes,
                "shared_region_free_bytes": s.shared_region_free_bytes,
                "huge_page_bytes": s.huge_page_bytes,
                "auto_unlinked": dict(_by_bytes(s.auto_unlinked)),
                "tickets_in_flight": s.tickets_in_flight,
                "tickets_lapsed": s.tickets_lapsed,
                "waiters": s.waiters,
                "refusals": dict(_by_bytes(s.refusals)),
                "pool_bytes": s.pool_bytes,
                "pool_segments": s.pool_segments,
                "pool_max_bytes": s.pool_max_bytes,
                "pool_reused": s.pool_reused,
                "pool_released_bytes": s.pool_released_bytes,
                "limits": {
                    "max_memory": s.max_memory,
                    "max_memory_per_user": lim.max_memory_per_user,
                    "max_segments_per_user": lim.max_segments_per_user,
                    "max_connections": lim.max_connections,
                    "max_connections_per_user": lim.max_connections_per_user,
                    "max_attachments_per_connection": lim.max_attachments_per_connection,
                    "handshake_timeout_ms": _handshake_ms(lim),
                    "fd_limit": lim.fd_limit,
                    "fd_reserve": lim.fd_reserve,
                },
                "requests": dict(_by_bytes(s.requests)),
                "errors": dict(_by_bytes(s.errors)),
            }
        )
        + "\n"
    )


def stats_prometheus(s, ctx):
    """Prometheus text exposition format 0.0.4, as ``shmctl stats --prometheus``."""
    out = []
    family = None

    def begin(name, kind, help_text):
        nonlocal family
        family = "shmbroker_" + name
        out.append(f"# HELP {family} {help_text}\n# TYPE {family} {kind}\n")

    def sample(value, labels=()):
        text = ",".join(f'{k}="{prometheus_label_value(v)}"' for k, v in labels)
        out.append(family + (f"{{{text}}} " if labels else " ") + value + "\n")

    def gauge(name, v, help_text):
        begin(name, "gauge", help_text)
        sample(str(v))

    def counter(name, v, help_text):
        begin(name, "counter", help_text)
        sample(str(v))

    def by_label(name, label, counts, help_text):
        begin(name, "counter", help_text)
        for k, v in _by_bytes(counts):
            sample(str(v), [(label, k)])

    lim = s.limits
    begin("info", "gauge", "The daemon's version, pid and socket path; always 1")
    sample("1", [("version", s.version), ("pid", str(s.pid)), ("socket", s.socket_path)])
    begin("start_time_seconds", "gauge", "When the daemon started, in seconds since the Unix epoch")
    sample("%.3f" % (unix_millis(unix_ns(s.started)) / 1000))
    begin("uptime_seconds", "gauge", "Seconds since the daemon started")
    sample("%.3f" % max(_uptime(s, ctx), 0.0))
    gauge("segments", s.segments, "Named segments the daemon holds")
    gauge(
        "bytes_held",
        s.bytes_held,
        "Bytes of segment memory held, including unlinked segments still in use",
    )
    gauge(
        "unlinked_segments",
        s.unlinked_segments,
        "Unlinked segments whose memory is still in use (attached or mapped)",
    )
    gauge(
        "unlinked_bytes",
        s.unlinked_bytes,
        "Bytes of unlinked segments still in use (counted in shmbroker_bytes_held)",
    )
    gauge("shared_regions", s.shared_regions, "Shared regions holding small segments")
    gauge(
        "shared_region_resident_bytes",
        s.shared_region_resident_bytes,
        "Bytes of memory the shared regions hold",
    )
    gauge(
        "shared_region_free_bytes",
        s.shared_region_free_bytes,
        "Bytes of the shared regions in no segment's block, kept zeroed for reuse",
    )
    gauge("huge_page_bytes", s.huge_page_bytes, "Bytes of segment memory backed by 2 MiB pages")
    # Every cause always has its series, so a rate() sees it start from 0.
    by_label(
        "auto_unlinked_total",
        "cause",
        {"connection": 0, "refcount": 0, "ttl": 0, **s.auto_unlinked},
        "Segments the daemon unlinked by itself, by cause (connection, refcount, ttl)",
    )
    gauge(
        "tickets_in_flight",
        s.tickets_in_flight,
        "Refcount arrays pickled to another process and not yet unpickled there",
    )
    counter(
        "tickets_lapsed_total",
        s.tickets_lapsed,
        "Pickled refcount arrays given up after --in-flight-timeout, never unpickled",
    )
    gauge("waiters", s.waiters, "Attaches waiting in the daemon for a segment (attach wait=)")
    gauge(
        "pool_bytes",
        s.pool_bytes,
        "Bytes of released segments' memory the warm pool keeps zeroed for reuse",
    )
    gauge("pool_segments", s.pool_segments, "Memfds in the warm pool")
    gauge("pool_max_bytes", s.pool_max_bytes, "--warm-pool: what the pool may keep (0: no pool)")
    counter("pool_reused_total", s.pool_reused, "Creates served from the warm pool")
    counter(
        "pool_released_bytes_total",
        s.pool_released_bytes,
        "Bytes the warm pool gave back (caps, memory pressure, trim)",
    )
    gauge("clients", s.clients, "Connected clients")
    by_label("requests_total", "op", s.requests, "Requests served, by operation")
    by_label(
        "refusals_total",
        "limit",
        s.refusals,
        "Requests and connections refused at a limit, by limit (memory_per_user, "
        "segments_per_user, max_memory, connections, ...)",
    )
    by_label(
        "errors_total",
        "code",
        s.errors,
        "Requests answered with an error, by status code (RESOURCE_EXHAUSTED: refused at a "
        "memory, segment or descriptor limit)",
    )
    counter(
        "log_lines_dropped_total",
        s.log_lines_dropped,
        "Log lines dropped because the daemon's stderr did not keep up",
    )
    gauge("max_memory_bytes", s.max_memory, "--max-memory: cap on all segments' bytes (0: none)")
    gauge(
        "max_memory_per_user_bytes",
        lim.max_memory_per_user,
        "--max-memory-per-user: cap on one owner's bytes (0: none)",
    )
    gauge(
        "max_segments_per_user",
        lim.max_segments_per_user,
        "--max-segments-per-user: cap on one owner's segments (0: none)",
    )
    gauge("max_connections", lim.max_connections, "--max-connections: clients connected at once")
    gauge(
        "max_connections_per_user",
        lim.max_connections_per_user,
        "--max-connections-per-user: clients of one uid at once",
    )
    gauge(
        "max_attachments_per_connection",
        lim.max_attachments_per_connection,
        "--max-attachments-per-connection: attachments one connection holds",
    )
    begin(
        "handshake_timeout_seconds",
        "gauge",
        "--handshake-timeout: how long a new connection may take to say hello",
    )
    sample("%.3f" % (_handshake_ms(lim) / 1000))
    gauge("fd_limit", lim.fd_limit, "The daemon's file descriptor limit (RLIMIT_NOFILE)")
    gauge(
        "fd_reserve",
        lim.fd_reserve,
        "File descriptors kept for connected clients and root at the limit",
    )
    return "".join(out)
