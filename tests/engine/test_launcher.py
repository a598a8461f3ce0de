"""Container monitors come from the launcher, a small process of their own, not from forks of the daemon: what a
container holds, who its monitor's parent is, and that a killed launcher loses nothing and is replaced."""
from __future__ import annotations

import os
import signal

import pytest

from machines.runtime.engine import Engine, launch
from machines.runtime.errors import HostError
from machines.runtime.linux import syscalls
from tests.engine.conftest import Runner, launchers_of, output, proc_stat, read_session, wait_for


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def test_container_init_and_execs_hold_only_their_stdio(engine: Engine, run: Runner) -> None:
    """Nothing of the launcher, the monitor, the exec helper or the daemon (sockets, report, go and status pipes)
    reaches a container's processes."""
    for tty in (False, True):
        cid = run(["sleep", "30"], Tty=tty)
        listing = engine.exec_create(cid, {"Cmd": ["sh", "-c", "ls /proc/1/fd; echo -; ls /proc/$$/fd; true"],
                                           "Tty": tty})
        init, _, shell = read_session(engine.exec_start(listing, tty=tty)).partition(b"-")
        assert init.split() == [b"0", b"1", b"2"]
        assert shell.split() == [b"0", b"1", b"2"]
        engine.remove(cid, force=True)


def test_a_killed_launcher_loses_no_container_and_is_replaced(engine: Engine, run: Runner) -> None:
    # The killed launcher's monitors are re-parented here rather than to PID 1, so the test can reap them.
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    shim = 0
    ticker = ""
    try:
        ticker = run(["sh", "-c", "while true; do echo tick; sleep 0.05; done"])
        shim = proc_stat(engine.inspect_container(ticker)["State"]["Pid"])[1]
        shim_comm, launcher, _ = proc_stat(shim)
        assert shim_comm == "shim-" + ticker[:10]
        assert proc_stat(launcher)[0] == "machines-launch" and _cmdline(launcher) == "machines-launcher"
        assert proc_stat(launcher)[1] == os.getpid()  # the daemon's child, itself no fork of the daemon

        os.kill(launcher, signal.SIGKILL)
        wait_for(lambda: proc_stat(shim)[1] != launcher, what="the monitor to outlive its launcher")
        logged = output(engine, ticker).count("tick")
        wait_for(lambda: output(engine, ticker).count("tick") > logged, what="the monitor to keep logging")

        later = run(["sh", "-c", "exit 4"])  # the next start brings up a new launcher
        assert engine.wait(later)["StatusCode"] == 4
        engine.stop(ticker, timeout=0)
        assert engine.inspect_container(ticker)["State"]["ExitCode"] == 137
    finally:
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 0)
        if shim and proc_stat(shim)[1] == os.getpid():
            engine.remove(ticker, force=True)
            os.waitpid(shim, 0)


def test_a_hung_launcher_fails_one_start_and_is_replaced(engine: Engine, run: Runner,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "LAUNCH_TIMEOUT", 1.0)
    engine.wait(run(["true"]))  # a launcher is up
    [hung] = launchers_of(os.getpid())
    os.kill(hung, signal.SIGSTOP)
    stuck = run(["true"], start=False)
    with pytest.raises(HostError, match="cannot start the container's monitor: the launcher did not answer"):
        engine.start(stuck)
    assert engine.inspect_container(stuck)["State"]["Status"] == "created"
    assert not os.path.exists(f"/proc/{hung}")  # killed and reaped
    assert engine.wait(run(["sh", "-c", "exit 6"]))["StatusCode"] == 6
    assert len(launchers_of(os.getpid())) == 1
