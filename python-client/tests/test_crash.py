"""A producer killed with SIGKILL after writing leaves its segment intact for everyone else."""

import signal
import subprocess
import sys

import numpy as np

import shmbroker
from sbtest import eventually, run_python


def test_sigkilled_producer(names):
    name = names()
    producer = f"""
import time, numpy as np, shmbroker
a = shmbroker.create({name!r}, (1000, 1000), "f8", attrs={{"by": "producer"}})
a[...] = np.arange(1e6).reshape(1000, 1000)
print("written", flush=True)
time.sleep(120)
"""
    p = subprocess.Popen([sys.executable, "-c", producer], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "written\n"
    finally:
        p.kill()
        p.wait(30)
        p.stdout.close()
    assert p.returncode == -signal.SIGKILL

    # The daemon saw the connection die and dropped its attachment, not the segment.
    assert eventually(lambda: not shmbroker.stat(name).creator_connected)
    info = shmbroker.stat(name)
    assert info.attachments == 0 and info.attrs == {"by": "producer"}

    consumer = f"""
import numpy as np, shmbroker
a = shmbroker.attach({name!r})
assert a.shape == (1000, 1000) and not a.flags.writeable
np.testing.assert_array_equal(a, np.arange(1e6).reshape(1000, 1000))
print("intact")
"""
    assert run_python(consumer).stdout.strip() == "intact"
    a = shmbroker.attach(name)
    assert a[999, 999] == 999_999.0 and a.sum() == np.arange(1e6).sum()
