"""The examples in python-client/examples run and check themselves."""

import os
import subprocess
import sys

import pytest

import shmbroker
from conftest import CLIENT_ROOT, REPO

EXAMPLES = os.path.join(CLIENT_ROOT, "examples")


@pytest.mark.parametrize(
    "script,args,expect",
    [
        ("tutorial.py", [], "42.0 in all 100000 elements"),
        ("tutorial.py", ["spawn"], "spawn: the parent sees 42.0"),
        ("pool_chunks.py", ["2000000"], "filled 16 MB in place"),
        ("pool_chunks.py", ["400000", "spawn"], "filled 3 MB in place"),
        ("producer_consumer.py", ["32"], "read 32 frames"),
        ("scope_manager.py", [], "after the block:"),
        ("scope_manager.py", ["spawn"], "spawn: 4 workers filled 15 MB"),
        ("pool_refcount.py", ["6"], "released: every segment freed"),
        ("pool_refcount.py", ["4", "fork"], "got 4 arrays"),
        ("seal_wait.py", [], "read 1000000 from the sealed segment"),
        ("seal_wait.py", ["spawn"], "spawn: the consumer waited"),
        ("auto_share_pool.py", ["8"], "spawn: 4 arrays of 8 MB went to the workers"),
        ("auto_share_pool.py", ["2", "fork"], "every segment freed"),
        ("auto_share_pool.py", ["2", "forkserver"], "forkserver: 4 arrays of 2 MB"),
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


README_BLOCKS = [
    (readme, i)
    for readme in ("README.md", os.path.join("python-client", "README.md"))
    for i in range(open(os.path.join(REPO, readme)).read().count("```python\n"))
]


@pytest.mark.parametrize("readme,index", README_BLOCKS, ids=lambda x: str(x))
def test_readme_python_blocks_run(tmp_path, readme, index):
    with open(os.path.join(REPO, readme)) as f:
        text = f.read()
    code = text.split("```python\n")[index + 1].split("```", 1)[0]
    name = f"examples/readme/{os.getpid()}"
    script = tmp_path / "readme.py"
    script.write_text(code.replace('"demo/data"', repr(name)))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stderr == "", p.stdout + p.stderr
    # Each block says what it prints in its last comment.
    expected = {
        "[42. 42. 42.]",
        "[250000. 250000. 250000.] False",
        "[0. 1. 2.] False",
        "SharedArray [-499999.5 -499998.5]",
        "[0. 1. 2. 3. 0. 1.]",
    }
    assert p.stdout.strip() in expected
    assert shmbroker.list("examples/*") == [], "the example cleaned up"


def test_readme_starts_with_the_seed_workflow():
    # The first Python a reader meets: a child attaches writable and writes 42.0.
    for readme in ("README.md", os.path.join("python-client", "README.md")):
        with open(os.path.join(REPO, readme)) as f:
            code = f.read().split("```python\n")[1].split("```", 1)[0]
        assert "attach(name, writable=True)" in code and "42.0" in code, readme
        assert len(code.strip().splitlines()) <= 15
