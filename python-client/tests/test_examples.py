"""The examples in python-client/examples run and check themselves."""

import os
import subprocess
import sys

import pytest

import shmbroker
from conftest import CLIENT_ROOT

EXAMPLES = os.path.join(CLIENT_ROOT, "examples")


@pytest.mark.parametrize(
    "script,args,expect",
    [
        ("tutorial.py", [], "42.0 in all 100000 elements"),
        ("tutorial.py", ["spawn"], "spawn: the parent sees 42.0"),
        ("pool_chunks.py", ["2000000"], "filled 16 MB in place"),
        ("pool_chunks.py", ["400000", "spawn"], "filled 3 MB in place"),
        ("producer_consumer.py", ["32"], "read 32 frames"),
    ],
    ids=lambda x: " ".join(x) if isinstance(x, list) else str(x),
)
def test_example(script, args, expect):
    p = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, script), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert expect in p.stdout, p.stdout
    assert p.stderr == "", "no warnings, no resource_tracker noise"
    assert shmbroker.list("examples/*") == [], "the example cleaned up"


def test_readme_example(tmp_path):
    with open(os.path.join(CLIENT_ROOT, "README.md")) as f:
        text = f.read()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 12
    name = f"examples/readme/{os.getpid()}"
    script = tmp_path / "readme.py"
    script.write_text(code.replace('"demo/data"', repr(name)))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stderr == "", p.stdout + p.stderr
    assert p.stdout.strip() == "[250000. 250000. 250000.] False"
    assert shmbroker.list("examples/*") == []
