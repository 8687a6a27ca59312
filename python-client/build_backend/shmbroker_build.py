"""PEP 517 backend: setuptools, taken from the system when pip's isolated build environment
does not have it, so that `pip install ./python-client` works offline.

With build isolation pip would otherwise download setuptools (and wheel) from an index. Debian
ships both as python3-setuptools and python3-wheel; this shim finds them in the interpreter's
own site directories and delegates everything to setuptools.build_meta.
"""

import os
import site
import sys


def _system_site_dirs():
    dirs = list(site.getsitepackages())
    for prefix in {sys.base_prefix, sys.prefix}:
        dirs.append(os.path.join(prefix, "lib", "python3", "dist-packages"))  # Debian
    return [d for d in dirs if os.path.isdir(d)]


try:
    import setuptools  # noqa: F401
except ImportError:
    for d in _system_site_dirs():
        if d not in sys.path:
            sys.path.append(d)  # after the isolated environment's own entries
    try:
        import setuptools  # noqa: F401
    except ImportError:
        raise ImportError(
            "building shmbroker needs setuptools: install it (Debian: apt install "
            "python3-setuptools python3-wheel) or let pip fetch it from an index"
        ) from None

from setuptools import build_meta as _orig
from setuptools.build_meta import *  # noqa: F401,F403


def _have_wheel():
    try:
        import wheel  # noqa: F401
    except ImportError:
        return False
    return True


def get_requires_for_build_wheel(config_settings=None):
    # setuptools < 70.1 asks for `wheel`, which pip would then try to download.
    return [] if _have_wheel() else _orig.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):
    if _have_wheel():
        return []
    return _orig.get_requires_for_build_editable(config_settings)


def get_requires_for_build_sdist(config_settings=None):
    return []


def _in_scratch_copy(hook):
    # setuptools writes build/ and *.egg-info into the source tree; build from a copy instead so
    # the checkout stays clean.
    import functools
    import shutil
    import tempfile

    @functools.wraps(hook)
    def run(output_directory, *args, **kwargs):
        source = os.getcwd()
        output_directory = os.path.abspath(output_directory)
        with tempfile.TemporaryDirectory(prefix="shmbroker-build-") as tmp:
            copy = os.path.join(tmp, "src")
            shutil.copytree(
                source, copy,
                ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests"),
            )
            os.chdir(copy)
            try:
                return hook(output_directory, *args, **kwargs)
            finally:
                os.chdir(source)

    return run


build_wheel = _in_scratch_copy(_orig.build_wheel)
build_sdist = _in_scratch_copy(_orig.build_sdist)
prepare_metadata_for_build_wheel = _in_scratch_copy(_orig.prepare_metadata_for_build_wheel)
