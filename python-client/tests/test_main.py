"""``python -m shmbroker`` against shmctl: the same daemon state, the same command line, the same
output, messages (shmctl's name aside) and exit codes."""

import json
import os
import pty
import re
import select
import signal
import subprocess

import pytest

import shmbroker
from conftest import BUILD_DIR, glob_escape
from sbtest import eventually, run_python

PYTHON = "/usr/bin/python3"
SHMCTL = os.path.join(BUILD_DIR, "bin", "shmctl")
PROG = "python3 -m shmbroker"  # how it names itself when run by /usr/bin/python3


def py(*args, env=None):
    return subprocess.run(
        [PYTHON, "-m", "shmbroker", *args], capture_output=True, timeout=60, env=env
    )


def ctl(*args, env=None):
    if not os.access(SHMCTL, os.X_OK):
        pytest.fail(f"no shmctl at {SHMCTL}: build it or set SHMBROKER_BUILD_DIR")
    return subprocess.run([SHMCTL, *args], capture_output=True, timeout=60, env=env)


def as_python(text):
    """shmctl's messages as this program words them: its name where it names itself."""
    return re.sub(rb"(^|')shmctl(?=[: ])", rb"\g<1>" + PROG.encode(), text, flags=re.M)


def same(*args, mask=lambda out: out):
    """Runs both with ``args`` and returns their outputs once they agree. Ages are in whole
    seconds: the two runs may straddle a second, so a difference is retried a few times (a
    real one stays)."""
    for _ in range(5):
        p, c = py(*args), ctl(*args)
        if (p.returncode, mask(p.stdout), p.stderr) == (
            c.returncode,
            mask(c.stdout),
            as_python(c.stderr),
        ):
            return p
    assert p.returncode == c.returncode, (p.stderr, c.stderr)
    assert p.stderr.decode() == as_python(c.stderr).decode()
    assert mask(p.stdout).decode() == mask(c.stdout).decode()


def pattern(names):
    return glob_escape(names.prefix) + "*"


@pytest.fixture
def population(names):
    """Segments of assorted dtypes, shapes, modes and attributes (one with text that must be
    escaped), one of them attached read-write twice, and one unlinked while still attached."""
    keep = [
        shmbroker.create(names("b/weights"), (1024, 256), "<f4", mode=0o640,
                         attrs={"units": "m/s", "note": "é \x1b[2J\u202e\x85 \\ \"q\""}),
        shmbroker.create(names("a/bias"), (256,), "<f8"),
        shmbroker.create(names("c/frames"), (3, 4, 5), "|u1", order="F", mode=0o644),
        shmbroker.create(names("d/scalar"), (), ">i2"),
        shmbroker.create(names("e/big"), (3 << 20,), "|u1"),
        shmbroker.create(names("f/gone"), (4096,), "<c16"),
    ]
    keep.append(shmbroker.attach(names("a/bias"), writable=True))
    keep.append(shmbroker.attach(names("c/frames")))
    shmbroker.unlink(names("f/gone"))
    return keep


def test_list_in_every_form_as_shmctl(names, population):
    pat = pattern(names)
    p = same("list", pat)
    lines = p.stdout.decode().splitlines()
    assert len(lines) == 6 and lines[0].startswith("NAME ")
    assert [line.split()[0] for line in lines[1:]] == [
        names(x) for x in ("a/bias", "b/weights", "c/frames", "d/scalar", "e/big")
    ]
    long_text = same("list", pat, "--long").stdout.decode()
    assert "note=\u00e9 \\x1b[2J\\u{202e}\\xc2\\x85 \\\\ " in long_text, long_text
    same("list", "-q", glob_escape(names.prefix) + "[ab]*", pat)  # overlapping: each once
    same("list", "-ql", "--socket", os.environ["SHMBROKER_SOCKET"], pat)
    same("list", "nothing-matches-this")
    same("list", pat, "--unlinked")
    age = re.compile(rb'"age_seconds":[0-9.]+')
    for args in (("list", pat, "--json"), ("list", "--unlinked", "--json", pat)):
        doc = json.loads(same(*args, mask=lambda out: age.sub(b"", out)).stdout)
        assert doc
    doc = json.loads(py("list", pat, "--json").stdout)
    weights = doc["segments"][1]
    assert weights["shape"] == [1024, 256] and weights["mode"] == "0640"
    assert weights["attrs"]["note"] == "é \x1b[2J\u202e\x85 \\ \"q\""
    gone = json.loads(py("list", "--unlinked", "--json", pat).stdout)["unlinked"]
    assert [(s["name"], s["nbytes"]) for s in gone] == [(names("f/gone"), 65536)]
    assert gone[0]["holders"][0]["pid"] == os.getpid()


def test_info_as_shmctl(names, population):
    same("info", names("a/bias"))
    same("info", names("b/weights"))
    out = same("info", names("a/bias")).stdout.decode()
    assert f"held by:   pid {os.getpid()}, " in out and "2 attachments (2 read-write)" in out
    ages = re.compile(rb'"age_seconds":[0-9.]+')
    doc = json.loads(same("info", "--json", names("c/frames"), mask=lambda o: ages.sub(b"", o))
                     .stdout)
    assert doc["order"] == "F" and doc["holders"][0]["attachments"] == 2
    missing = same("info", names("missing"))
    assert missing.returncode == 1 and b"NOT_FOUND" in missing.stderr
    glob = same("info", pattern(names))
    assert f"use '{PROG} list ".encode() in glob.stderr


def test_purge_removes_the_same_as_shmctl(names):
    # Two copies of a population, one purged by each: the outputs agree but for the prefix.
    def make(copy):
        arrays = [shmbroker.create(names(f"{copy}/held"), (8,), "<f8")]
        for sub, n in (("x", 1000), ("y", 64), ("z", 1 << 20)):
            shmbroker.create(names(f"{copy}/{sub}"), (n,), "|u1")
        return arrays

    held = make("p") + make("c")  # kept attached until the end
    shmbroker.flush()  # the others' releases, so both copies are in the same state
    pp, cp = glob_escape(names("p/")) + "*", glob_escape(names("c/")) + "*"
    prefix = lambda copy: names(copy + "/").encode()  # noqa: E731
    for args in (["--dry-run"], ["-n", "--json"], ["--older-than", "0s", "-n"],
                 ["--unattached", "-n"], ["--orphans", "-n"], ["--owner", "root", "-n"],
                 ["--owner", str(os.geteuid()), "--all", "-n", "--json"]):
        p, c = py("purge", pp, *args), ctl("purge", cp, *args)
        assert (p.returncode, p.stderr) == (c.returncode, c.stderr) == (0, b""), args
        assert p.stdout == c.stdout.replace(prefix("c"), prefix("p")), args
    assert len(shmbroker.list(pp)) == 4, "dry runs removed nothing"
    p, c = py("purge", "--unattached", pp), ctl("purge", "--unattached", cp)
    assert p.stdout == c.stdout.replace(prefix("c"), prefix("p"))
    assert p.stdout.decode().endswith("removed 3 segments, 1.0 MiB freed\n"), p.stdout
    assert [s.name for s in shmbroker.list(pp)] == [names("p/held")]
    p, c = py("purge", pp, "--all", "--json"), ctl("purge", cp, "--json", "--all")
    assert p.stdout == c.stdout.replace(prefix("c"), prefix("p"))
    assert json.loads(p.stdout)["removed_count"] == 1
    assert shmbroker.list(pp) == [] and shmbroker.list(cp) == []
    del held


def test_purge_orphans(names):
    creator = f"import shmbroker\nshmbroker.create({names('o/1')!r}, 10, '|u1')\n"
    run_python(creator)  # exits: its segment is an orphan
    assert eventually(lambda: not shmbroker.stat(names("o/1")).creator_connected)
    shmbroker.create(names("o/2"), 10)  # ours, and we are connected
    out = py("purge", "--orphans", pattern(names))
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == f"removed {names('o/1')} (10 B)\nremoved 1 segment, 10 B freed\n"


def test_stats_as_shmctl(names, population):
    # What the two runs themselves change: the uptime, the clients and the request counts.
    uptime = re.compile(rb"^uptime: .*$", re.M)
    counts = re.compile(rb"^((clients|requests):.*)$", re.M)

    def mask(out):
        return counts.sub(lambda m: re.sub(rb"\d+", b"N", m[1]), uptime.sub(b"", out))

    text = same("stats", mask=mask).stdout.decode()
    assert re.search(r"^segments: +\d+$", text, re.M) and "held, cap 1.0 GiB" in text
    volatile_json = re.compile(rb'"(uptime_seconds|clients|requests)":(\{[^}]*\}|[0-9.]+)')

    def mask_json(out):
        return volatile_json.sub(lambda m: re.sub(rb"\d+", b"N", m[0]), out)

    doc = json.loads(same("stats", "--json", mask=mask_json).stdout)
    assert doc["unlinked_segments"] >= 1 and doc["requests"]["create"] >= 6
    volatile_prom = re.compile(rb"^(shmbroker_(uptime_seconds|clients|requests_total)\S*) .*$",
                               re.M)
    prom = same("stats", "--prometheus", mask=lambda out: volatile_prom.sub(rb"\1", out))
    lines = prom.stdout.decode().splitlines()
    sample = re.compile(r'shmbroker_[a-z_]+(\{([a-z]+="([^"\\\n]|\\[\\"n])*",?)+\})? [0-9.]+')
    for line in lines:
        assert line.startswith("# ") or sample.fullmatch(line), line
    families = {line.split()[0].split("{")[0] for line in lines if not line.startswith("#")}
    for family in families:
        assert f"# HELP {family} " in prom.stdout.decode(), family
        assert f"# TYPE {family} " in prom.stdout.decode(), family
    assert {"shmbroker_segments", "shmbroker_bytes_held", "shmbroker_clients",
            "shmbroker_requests_total", "shmbroker_errors_total"} <= families


def test_usage_errors_as_shmctl():
    for args in (["--bogus"], ["list", "--bogus"], ["--bogus", "list"], ["info"],
                 ["info", "a", "b"], ["info", "--json"], ["stats", "extra"], ["lsit", "list"],
                 ["--socket", ""], ["--socket=", "list"], ["list", "--socket", ""],
                 ["list", "--socket"], ["purge", "--older-than"], ["purge", "--owner="],
                 ["purge", "--owner", "a", "--owner", "b"], ["list", "-lx"],
                 ["list", "--json=bogus"], ["stats", "--json", "--prometheus"],
                 ["stats", "--prometheus", "--json=true"], ["list", "--prometheus"],
                 ["purge"], ["purge", "-n", "--json"], ["purge", "--older-than", "5"],
                 ["purge", "--older-than", "--all"], ["purge", "--owner", "no-such-user-here"]):
        p = same(*args)
        assert p.returncode == 2, args
        assert p.stderr, args
        assert p.stdout == b"", args
    # Where the commands are listed, only these four.
    for args, message in (
        ([], "a command is required: list, info, purge or stats"),
        (["lsit"], "unknown command 'lsit' (commands: list, info, purge, stats)"),
        (["unlink", "x"], "unknown command 'unlink' (commands: list, info, purge, stats)"),
    ):
        p = py(*args)
        assert p.returncode == 2, args
        assert p.stderr.decode() == f"{PROG}: {message}\nRun '{PROG} --help' for usage.\n"
        assert ctl(*args).returncode in (0, 1, 2)  # shmctl has unlink besides


def test_empty_values_select_nothing_and_flags_take_values(names):
    shmbroker.create(names("v"), 8)
    same("purge", "--owner", "", "--older-than", "", pattern(names), "-n")
    same("list", "--json=false", "--long=1", pattern(names))


def test_unreachable_daemon_exits_3(tmp_path):
    nowhere = str(tmp_path / "nothing.sock")
    for command in (["list"], ["info", "x"], ["stats", "--prometheus"], ["purge", "--all"]):
        p = same("--socket", nowhere, *command)
        assert p.returncode == 3 and nowhere.encode() in p.stderr
        assert p.stdout == b""


def test_help_and_version():
    def options(text):
        text = text.decode().replace(PROG, "")
        return set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", text))

    top = py("--help")
    assert top.returncode == 0 and b"Usage" in top.stdout
    assert options(top.stdout) == options(ctl("--help").stdout)
    for command in ("list", "info", "purge", "stats"):
        p, c = py(command, "--help"), ctl(command, "--help")
        assert p.returncode == c.returncode == 0
        assert options(p.stdout) == options(c.stdout), command
        assert p.stdout.splitlines()[0] == c.stdout.splitlines()[0]  # the same summary
    v = py("--version")
    assert (v.returncode, v.stdout) == (0, f"shmbroker {shmbroker.__version__}\n".encode())


def _on_terminal(argv, env):
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(argv[0], argv, env)
    out = b""
    while select.select([fd], [], [], 30)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child is gone
            break
        if not chunk:
            break
        out += chunk
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def test_on_a_terminal_bold_header_and_totals(names, population):
    pat = pattern(names)
    base = {"SHMBROKER_SOCKET": os.environ["SHMBROKER_SOCKET"],
            "PYTHONPATH": os.environ["PYTHONPATH"]}
    for extra, bold in (({"TERM": "xterm"}, True), ({"TERM": "xterm", "NO_COLOR": "1"}, False),
                        ({"TERM": "dumb"}, False)):
        env = dict(base, **extra)
        for _ in range(5):  # ages may straddle a second, see same()
            p = _on_terminal([PYTHON, "-m", "shmbroker", "list", pat], env)
            c = _on_terminal([SHMCTL, "list", pat], env)
            if p == c:
                break
        assert p == c
        assert p[1].startswith(b"\033[1mNAME") == bold
        assert p[1].endswith(b"5 segments, 4.0 MiB\r\n"), p[1]


def test_a_closed_pipe_ends_it_as_it_ends_shmctl():
    # As a C program: killed by SIGPIPE, without a word (no BrokenPipeError traceback).
    for argv in ([PYTHON, "-m", "shmbroker"], [SHMCTL]):
        r, w = os.pipe()
        os.close(r)  # before it starts: its first write finds no reader, however fast it is
        proc = subprocess.Popen([*argv, "stats"], stdout=w, stderr=subprocess.PIPE)
        os.close(w)
        _, err = proc.communicate(timeout=60)
        assert (proc.returncode, err) == (-signal.SIGPIPE, b""), argv
