"""A driver whose resources are files, so tests can see exactly what a create made and what it left behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

from machines.drivers.base import Driver, Flag, Ledger, SSHDetails, State
from machines.drivers.nshost import HostState, IsolatedHost
from machines.errors import DriverError, PreCreateError


class FileDriver(Driver):
    """Makes ``resources`` files in ``--files-world``, then fails at ``--files-fail-at`` if asked to.

    ``fail-at`` is ``create`` (a driver error half way), ``interrupt`` (Ctrl-C half way), ``ssh`` (the host never
    answers SSH) or empty (succeed, then SSH to ``--files-ssh-port`` on 127.0.0.1).
    """

    name = "files"
    flags = [
        Flag("world", "folder that holds the resources"),
        Flag("resources", "how many resources to make", type=int, default=3),
        Flag("fail-at", "where to fail", default=""),
        Flag("ssh-port", "port of an sshd on 127.0.0.1", type=int, default=1),
        Flag("token", "a secret", secret=True, envvar="FILES_TOKEN"),
        Flag("pause", "seconds to wait after the first resource (time to press Ctrl-C)", type=int, default=0),
        Flag("state-delay", "seconds a state query takes", type=int, default=0),
    ]

    def pre_create_check(self) -> None:
        if not self.config.get("world"):
            raise PreCreateError("the files driver needs --files-world")

    def _path(self, index: int) -> Path:
        return Path(self.config["world"]) / f"{self.machine_name}-{index}"

    def create(self, ledger: Ledger) -> None:
        for index in range(self.config["resources"]):
            path = self._path(index)
            path.write_text("resource")
            ledger.record(f"file {path.name}", path.unlink)
            if index == 0 and self.config["pause"]:
                marker = Path(self.config["world"]) / f"started-{self.machine_name}"
                marker.touch()
                try:
                    time.sleep(self.config["pause"])
                finally:
                    marker.unlink()
            if index == 1 and self.config["fail_at"] in ("create", "interrupt"):
                # The ledger so far must already be on disk, for a crash to leave a trace.
                record = (Path(self.store_dir) / "config.json").read_text()
                assert f"file {path.name}" in record
                if self.config["fail_at"] == "interrupt":
                    raise KeyboardInterrupt
                raise DriverError("injected fault after two resources")

    def remove(self) -> None:
        for path in Path(self.config["world"]).glob(f"{self.machine_name}-*"):
            path.unlink()

    def state(self) -> State:
        time.sleep(self.config.get("state_delay") or 0)
        return State.RUNNING if self._path(0).exists() else State.NOT_FOUND

    def ip(self) -> str:
        return "127.0.0.1"

    def ssh_details(self) -> SSHDetails:
        return SSHDetails("127.0.0.1", int(self.config["ssh_port"]), "root", self.ssh_key_path)

    def resources(self) -> list[str]:
        return sorted(os.listdir(self.config["world"]))


class NsHostDriver(Driver):
    """A minimal driver over ``drivers.nshost`` (real sshd hosts in namespaces), for end-to-end create tests."""

    name = "nstest"
    flags = [Flag("state-dir", "folder of the isolated host"), Flag("bridge", "bridge"), Flag("subnet", "its subnet")]

    def _host(self) -> IsolatedHost:
        return IsolatedHost(self.config["state_dir"])

    def create(self, ledger: Ledger) -> None:
        public_key = Path(f"{self.ssh_key_path}.pub").read_text()
        host = IsolatedHost.create(self.config["state_dir"], self.machine_name, public_key, record=ledger.record,
                                   bridge=self.config["bridge"], subnet=self.config["subnet"])
        host.start()
        ledger.record(f"sshd of {self.machine_name}", host.kill)

    def remove(self) -> None:
        self._host().remove()

    def state(self) -> State:
        time.sleep(self.config.get("state_delay") or 0)
        return {HostState.RUNNING: State.RUNNING, HostState.STOPPED: State.STOPPED}.get(
            self._host().state(), State.NOT_FOUND
        )

    def ip(self) -> str:
        return self._host().address

    def ssh_details(self) -> SSHDetails:
        return SSHDetails(self.ip(), 22, "root", self.ssh_key_path)

    def initial_host_key(self) -> str | None:
        return self._host().host_public_key
