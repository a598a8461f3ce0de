"""An exec's output read from descriptors a busy daemon hands out: numbers above 1023, which ``select`` refuses."""

from __future__ import annotations

import os
import resource
import threading

from machines.runtime.engine.sessions import ExecSession


def test_exec_output_on_descriptors_above_1023_reaches_the_client() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    read_end, write_end = os.pipe()
    high = os.dup2(read_end, 2000)
    os.close(read_end)
    done = threading.Event()
    session = ExecSession({high: 1}, None, False, done)
    try:
        os.write(write_end, b"from far up\n")
        os.close(write_end)
        done.set()
        assert session.read() == (1, b"from far up\n")
        assert session.read() is None
    finally:
        session.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
