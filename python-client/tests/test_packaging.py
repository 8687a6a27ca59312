"""`pip install ./python-client` builds offline with the system's setuptools and leaves the
checkout clean."""

import importlib.util
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import CLIENT_ROOT


def test_wheel_builds_offline(tmp_path):
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed (Debian: python3-pip)")
    before = sorted(os.listdir(CLIENT_ROOT))
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS="", PIP_DISABLE_PIP_VERSION_CHECK="1")
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), CLIENT_ROOT],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    (wheel,) = tmp_path.glob("shmbroker-*.whl")
    with zipfile.ZipFile(wheel) as z:
        files = set(z.namelist())
        meta = z.read(next(f for f in files if f.endswith(".dist-info/METADATA"))).decode()
    assert {"shmbroker/__init__.py", "shmbroker/_wire/shmbroker_pb2.py"} <= files
    assert not any(f.startswith(("tests/", "build_backend/")) for f in files)
    assert "Requires-Dist: numpy" in meta and "Requires-Dist: protobuf" in meta
    assert sorted(os.listdir(CLIENT_ROOT)) == before, "no build/ or *.egg-info left behind"


def test_star_import_shadows_no_builtin():
    import builtins

    import shmbroker

    shadowed = [n for n in shmbroker.__all__ if hasattr(builtins, n)]
    assert not shadowed, f"`from shmbroker import *` would replace builtins: {shadowed}"
    assert all(hasattr(shmbroker, n) for n in shmbroker.__all__)
    # In a fresh interpreter, as a user would see it.
    code = "from shmbroker import *\nassert list(range(3)) == [0, 1, 2]\nprint(len(Client.list.__doc__) > 0)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_every_version_agrees():
    # The version is written in CMakeLists.txt (project(... VERSION)) and in the Python package;
    # everything else derives from those two, which this test keeps equal.
    import re

    import shmbroker
    from conftest import BUILD_DIR, REPO

    with open(os.path.join(REPO, "CMakeLists.txt")) as f:
        cmake = re.search(r"project\(shmbroker VERSION ([0-9.]+)", f.read()).group(1)
    with open(os.path.join(CLIENT_ROOT, "pyproject.toml")) as f:
        pyproject = re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)
    found = {
        "CMakeLists.txt": cmake,
        "pyproject.toml": pyproject,
        "shmbroker.__version__": shmbroker.__version__,
        "the running daemon": shmbroker.default_client().server.version,
    }
    for program in ("shmbrokerd", "shmctl"):
        out = subprocess.run([os.path.join(BUILD_DIR, "bin", program), "--version"],
                             capture_output=True, text=True, timeout=30).stdout
        found[f"{program} --version"] = out.split()[-1]
    assert set(found.values()) == {cmake}, found
