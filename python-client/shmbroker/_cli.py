"""``python -m shmbroker``: shmctl's list, info, purge and stats for those who installed only the
Python package. The same options, output (through _render.py), messages and exit codes as
shmctl (client/shmctl/main.cc and commands.cc); messages name this program instead.

Exit codes: 0 success, 1 an operation failed, 2 usage error, 3 the daemon could not be reached.
"""

import dataclasses
import os
import pwd
import re
import signal
import sys

from . import _render
from .client import Client
from .errors import Code, Error

OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3

PROG = f"{os.path.basename(sys.executable) or 'python3'} -m shmbroker"
COMMANDS = ("list", "info", "purge", "stats")


@dataclasses.dataclass(frozen=True)
class _Command:
    help: str
    positional: str  # its name, "" for none
    many: bool  # the positional takes any number of values (else exactly one, required)
    positional_help: str
    flags: dict  # "--long" -> (attribute, "-l" or "", help)
    options: dict  # "--owner" -> (attribute, help): each takes a value


_JSON = ("json", "", "One JSON document (see README)")
_SPECS = {
    "list": _Command(
        "One row per segment, sorted by name",
        "PATTERN",
        True,
        "Shell-style globs (job7/*); all segments if none",
        {
            "--json": _JSON,
            "--long": ("long", "-l", "Add creator pid, creation time and attributes"),
            "--quiet": ("quiet", "-q", "Only the names, one per line"),
            "--unlinked": (
                "unlinked",
                "",
                "Unlinked segments still in use (attached or mapped) and who holds them",
            ),
        },
        {},
    ),
    "info": _Command(
        "Everything the daemon knows about one segment, and which processes hold it",
        "NAME",
        False,
        "Segment name",
        {"--json": _JSON},
        {},
    ),
    "purge": _Command(
        "Unlink every segment matching ALL the selectors given (at least one)",
        "PATTERN",
        True,
        "Shell-style globs; a name matching any counts",
        {
            "--orphans": (
                "orphans",
                "",
                "No live attachments and the connection that created it has closed",
            ),
            "--unattached": ("unattached", "", "No live attachments"),
            "--all": ("all", "", "Every segment (yours only, unless you are root)"),
            "--dry-run": ("dry_run", "-n", "Only print what would be removed"),
            "--json": _JSON,
        },
        {
            "--older-than": ("older_than", "Created at least this long ago: 90s, 10m, 2h, 7d"),
            "--owner": ("owner", "Owned by this user (name or uid)"),
        },
    ),
    "stats": _Command(
        "Daemon version, uptime, memory, clients, counters",
        "",
        False,
        "",
        {
            "--json": _JSON,
            "--prometheus": (
                "prometheus",
                "",
                "Prometheus text format, for node_exporter's textfile collector",
            ),
        },
        {},
    ),
}
_SOCKET_HELP = "Daemon socket (default: $SHMBROKER_SOCKET, else the standard path)"
_TRUE = ("", "1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")


class _Exit(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


def _write(stream, text):
    stream.buffer.write(text.encode("utf-8", "surrogateescape"))
    stream.flush()


def _usage_error(message):
    """shmctl's own usage errors."""
    _write(sys.stderr, f"{PROG}: {message}\nRun '{PROG} --help' for usage.\n")
    return _Exit(USAGE)


def _parse_error(message):
    """The errors shmctl's command-line parser (CLI11) reports, in its words."""
    _write(sys.stderr, f"{message}\nRun with --help for more information.\n")
    return _Exit(USAGE)


def _help(command):
    def line(tag, text):
        return f"  {tag:<28}{text}\n" if len(tag) < 28 else f"  {tag} {text}\n"

    if command is None:
        text = (
            f"{PROG}: inspect and clean up the segments shmbrokerd holds\n"
            f"Usage: {PROG} [OPTIONS] [SUBCOMMAND]\n\nOptions:\n"
            + line("-h,--help", "Print this help message and exit")
            + line("--socket TEXT:PATH", _SOCKET_HELP)
            + line("--version", "Display program version information and exit")
            + "\nSubcommands:\n"
            + "".join(line(name, _SPECS[name].help) for name in COMMANDS)
        )
    else:
        spec = _SPECS[command]
        usage = f"Usage: {PROG} {command} [OPTIONS]"
        if spec.positional:
            usage += f" [{spec.positional}...]" if spec.many else f" {spec.positional}"
        text = f"{spec.help}\n{usage}\n\n"
        if spec.positional:
            tag = spec.positional + (" TEXT ..." if spec.many else " TEXT REQUIRED")
            text += "Positionals:\n" + line(tag, spec.positional_help) + "\n"
        text += "Options:\n" + line("-h,--help", "Print this help message and exit")
        for flag, (_, short, help_text) in spec.flags.items():
            text += line(f"{short},{flag}" if short else flag, help_text)
        for option, (_, help_text) in spec.options.items():
            text += line(f"{option} TEXT", help_text)
    _write(sys.stdout, text + "\n")


def parse(argv):
    """The command line as shmctl reads it: (command, socket, values by attribute,
    positionals). Raises _Exit after printing help, the version or a usage error."""
    # A bare "--socket=" would take the next argument as its value.
    if "--socket=" in argv:
        raise _usage_error("--socket: the path is empty")
    command = None
    socket = []
    values = {}
    positionals = []
    extras = []  # unknown options and arguments, reported once the command is known
    wants_help = False
    only_positionals = False

    i = 0
    while i < len(argv):
        arg = argv[i]
        spec = _SPECS.get(command)
        if only_positionals or not arg.startswith("-") or arg == "-":
            if command is None and not only_positionals and arg in COMMANDS:
                command = arg
            elif command is None or not spec.positional:
                extras.append(arg)
            elif spec.many or not positionals:
                positionals.append(arg)
            else:
                extras.append(arg)
            i += 1
            continue
        if arg == "--":
            only_positionals = True
            i += 1
            continue
        name, eq, inline = arg.partition("=")
        inline = inline if eq else None
        if name in ("-h", "--help"):
            wants_help = True
        elif name == "--version":
            from . import __version__

            _write(sys.stdout, f"shmbroker {__version__}\n")
            raise _Exit(OK)
        elif name == "--socket" or (spec is not None and name in spec.options):
            if inline is None and i + 1 >= len(argv):
                kind = "TEXT:PATH" if name == "--socket" else "TEXT"
                raise _parse_error(f"{name}: 1 required {kind} missing")
            value = inline if inline is not None else argv[i + 1]
            i += 0 if inline is not None else 1
            if value == "" and inline is not None:
                raise _parse_error(f"{name}: 1 required TEXT missing")
            if name == "--socket":
                if value == "":
                    raise _parse_error("--socket: the socket path must not be empty")
                socket.append(value)
            else:
                values.setdefault(spec.options[name][0], []).append(value)
        elif spec is not None and name in spec.flags:
            if inline is not None and inline.lower() not in _TRUE + _FALSE:
                raise _parse_error(f"Could not convert: {name} = {inline}")
            values[spec.flags[name][0]] = inline is None or inline.lower() in _TRUE
        elif not arg.startswith("--") and spec is not None:
            # Short flags, alone or together (-lq).
            shorts = {short: attr for attr, short, _ in spec.flags.values() if short}
            for k, c in enumerate(arg[1:]):
                if c == "h":
                    wants_help = True
                elif "-" + c in shorts:
                    values[shorts["-" + c]] = True
                else:
                    extras.append("-" + arg[1 + k :])
                    break
        else:
            extras.append(arg)
        i += 1

    if wants_help:
        _help(command)
        raise _Exit(OK)
    for name, given in [("--socket", socket)] + [
        (option, values.get(attr, []))
        for option, (attr, _) in (_SPECS[command].options.items() if command else [])
    ]:
        if len(given) > 1:
            raise _parse_error(f"{name}: At Most 1 required but received {len(given)}")
    if command == "info" and not positionals:
        raise _parse_error("NAME is required")
    if extras:
        first = extras[0]
        if first.startswith("-"):
            raise _usage_error(
                f"unknown option '{first}'" + (f" for '{command}'" if command else "")
            )
        if command is None:
            raise _usage_error(f"unknown command '{first}' (commands: {', '.join(COMMANDS)})")
        raise _usage_error(f"unexpected argument '{first}' for '{command}'")
    if command is None:
        listed = ", ".join(COMMANDS[:-1])
        raise _usage_error(f"a command is required: {listed} or {COMMANDS[-1]}")
    if command == "stats" and values.get("json") and values.get("prometheus"):
        raise _usage_error("--json and --prometheus cannot be used together: choose one format")
    values = {k: (v[0] if isinstance(v, list) else v) for k, v in values.items()}
    return command, (socket[0] if socket else None), values, positionals


# --- The commands (commands.cc) ------------------------------------------------------------------


def _fail(error, what):
    # "CODE: message", as shmbroker::Status::ToString().
    text = error.code.name + (f": {error.message}" if error.message else "")
    _write(sys.stderr, f"{PROG}: {what}: {text}\n")
    return UNREACHABLE if error.code == Code.UNAVAILABLE else FAILED


def _fail_by_name(error, command, name):
    rc = _fail(error, f"{command} '{name}'")
    if error.code == Code.NOT_FOUND and any(c in name for c in "*?["):
        _write(
            sys.stderr,
            f"{PROG}: {command} takes exact names, not patterns: use '{PROG} list {name}' to "
            f"see what matches, '{PROG} purge {name}' to unlink it\n",
        )
    return rc


_users = {}


def _user_name(uid):
    name = _users.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        _users[uid] = name
    return name


def _context():
    terminal = os.isatty(1)
    # https://no-color.org: set and not empty. A dumb terminal shows escapes as garbage.
    color = terminal and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    return _render.Context(_render.now_ns(), _user_name, terminal, color)


def _name_key(name):
    return name.encode("utf-8", "surrogateescape")


def _list(client, patterns, opts):
    unlinked = opts.get("unlinked", False)
    found = {}  # Sorted by name below, each once (unlinked ones: a name may repeat).
    for p in patterns or [""]:
        for s in client.list(p, unlinked=unlinked):
            key = (_name_key(s.name), _render.unix_ns(s.created) if unlinked else 0)
            found.setdefault(key, s)
    segments = [found[k] for k in sorted(found)]
    ctx = _context()
    if unlinked:
        render = _render.unlinked_json if opts.get("json") else _render.unlinked_text
        return render(segments, ctx)
    if opts.get("json"):
        return _render.list_json(segments, ctx)
    if opts.get("quiet"):
        return _render.list_names(segments)
    return _render.list_text(segments, opts.get("long", False), ctx)


_DURATION = re.compile(r"([0-9]+)([smhdw])", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text):
    """Seconds of "90s", "10m", "2h", "7d", "1w" (the unit is required), or None, as shmctl."""
    m = _DURATION.fullmatch(text)
    if not m or int(m[1]) >= 1 << 64:
        return None
    n, mult = int(m[1]), _UNITS[m[2]]
    return None if n > (1 << 40) // mult else n * mult


def parse_user(text):
    """The uid of a user name or a decimal uid, or None, as shmctl."""
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        pass
    if re.fullmatch(r"[0-9]+", text, re.ASCII) and int(text) < 0xFFFFFFFF:
        return int(text)
    return None


def _purge_selectors(patterns, opts):
    """The keyword arguments of Client.purge for the selectors given; raises _Exit after a usage
    error."""
    sel = {flag: opts.get(flag, False) for flag in ("orphans", "unattached", "all")}
    older_than, owner = opts.get("older_than", ""), opts.get("owner", "")
    if older_than:  # An empty value is no selector, as in shmctl.
        sel["older_than"] = parse_duration(older_than)
        if sel["older_than"] is None:
            _write(
                sys.stderr,
                f"{PROG}: purge: --older-than '{older_than}' is not a duration like 90s, 10m, "
                "2h, 7d\n",
            )
            raise _Exit(USAGE)
    if owner:
        sel["owner"] = parse_user(owner)
        if sel["owner"] is None:
            _write(sys.stderr, f"{PROG}: purge: no such user '{owner}'\n")
            raise _Exit(USAGE)
    if not (patterns or older_than or owner or sel["orphans"] or sel["unattached"] or sel["all"]):
        _write(
            sys.stderr,
            f"{PROG}: purge: refusing to purge without a selector.\n"
            "Say what to remove: PATTERN..., --orphans, --older-than DURATION, --owner USER, "
            "--unattached, or --all for everything. Add --dry-run to see first.\n",
        )
        raise _Exit(USAGE)
    return sel


def run(command, socket, opts, positionals):
    """Runs one command; returns the exit code."""
    sel = _purge_selectors(positionals, opts) if command == "purge" else None
    try:
        client = Client(socket, client_name="python:shmbroker")
    except Error as e:
        return _fail(e, "connect")
    with client:
        if command == "list":
            try:
                out = _list(client, positionals, opts)
            except Error as e:
                return _fail(e, "list")
        elif command == "info":
            try:
                info = client.stat(positionals[0])
            except Error as e:
                return _fail_by_name(e, "info", positionals[0])
            render = _render.info_json if opts.get("json") else _render.info_text
            out = render(info, _context())
        elif command == "purge":
            dry_run = opts.get("dry_run", False)
            try:
                r = client.purge(positionals, dry_run=dry_run, **sel)
            except Error as e:
                return _fail(e, "purge")
            if opts.get("json"):
                out = _render.purge_json(r, dry_run, _context())
            else:
                out = _render.purge_text(r, dry_run)
        else:
            try:
                s = client.stats()
            except Error as e:
                return _fail(e, "stats")
            if opts.get("prometheus"):
                render = _render.stats_prometheus
            else:
                render = _render.stats_json if opts.get("json") else _render.stats_text
            out = render(s, _context())
    _write(sys.stdout, out)
    return OK


def main(argv=None):
    # As a C program: a closed pipe (| head) ends the output quietly. The client's socket sends
    # use MSG_NOSIGNAL, so this concerns stdout only.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(*parse(argv))
    except _Exit as e:
        return e.code
