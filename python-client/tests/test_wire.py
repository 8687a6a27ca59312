"""The committed protobuf module is protoc's output for proto/shmbroker.proto, unchanged."""

import os
import shutil
import subprocess

import pytest

from conftest import CLIENT_ROOT, REPO

PROTO_DIR = os.path.join(REPO, "proto")
COMMITTED = os.path.join(CLIENT_ROOT, "shmbroker", "_wire", "shmbroker_pb2.py")


def test_generated_module_matches_proto(tmp_path):
    protoc = shutil.which("protoc")
    if protoc is None:
        pytest.skip("protoc is not installed (Debian: protobuf-compiler)")
    subprocess.run(
        [protoc, "-I", PROTO_DIR, f"--python_out={tmp_path}", "shmbroker.proto"],
        check=True,
        cwd=PROTO_DIR,
    )
    with open(tmp_path / "shmbroker_pb2.py", "rb") as f:
        fresh = f.read()
    with open(COMMITTED, "rb") as f:
        committed = f.read()
    assert fresh == committed, (
        "shmbroker/_wire/shmbroker_pb2.py is out of date; regenerate it with\n"
        "  protoc -I proto --python_out=python-client/shmbroker/_wire proto/shmbroker.proto"
    )


def test_codes_match_the_wire():
    import shmbroker
    from shmbroker._wire import pb

    for name, number in pb.Code.items():
        assert shmbroker.Code[name] == number
    # One exception class per non-OK code, each reporting its code.
    for code in shmbroker.Code:
        if code == shmbroker.Code.OK:
            continue
        cls = shmbroker.errors._BY_CODE[code]
        assert issubclass(cls, shmbroker.Error) and cls.code == code
        e = shmbroker.errors.error_for(int(code), "the message")
        assert type(e) is cls and str(e) == "the message" and e.code == code
