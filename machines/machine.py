"""Machines and their lifecycle: create as a transaction, start, stop, restart, kill, rm.

``Machines`` is the library's entry point::

    from machines import Machines
    machines = Machines()                     # or Machines("/path/to/store")
    web = machines.create("web", "local")     # driver flags: flags={"ip_address": ...}
    print(web.ssh().run("hostname").stdout)
    machines.remove("web")

Create is all or nothing: the driver records every resource it makes in a ``Ledger`` that is persisted as it grows;
any failure or Ctrl-C walks it backwards and removes the store entry, unless ``keep_on_error`` is set.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from machines import contexts, hostoptions
from machines.drivers import registry
from machines.drivers.base import Driver, Ledger, SSHDetails, State
from machines.errors import (
    CancelledError,
    DriverError,
    MachineExistsError,
    MachinesError,
    MachineTimeoutError,
    ProvisionError,
    SSHError,
    StateError,
    UsageError,
)
from machines.hostoptions import HostOptions
from machines.progress import Progress
from machines.store import (
    KEY_FILE,
    STATE_FAILED,
    STATE_READY,
    Store,
    generate_ssh_key,
    new_record,
    validate_name,
)

if TYPE_CHECKING:  # paramiko costs ~0.3 s to import: only commands that use SSH pay for it
    from machines.ssh import Connection

log = logging.getLogger(__name__)

DEFAULT_DRIVER = "local"
DEFAULT_SSH_TIMEOUT = 120.0
DEFAULT_STATE_TIMEOUT = 60.0
DEFAULT_API_PORT = 2376

T = TypeVar("T")


class Provisioner(Protocol):
    """What the core needs of whatever installs a container engine on a host and tells clients how to reach it.

    ``Machines`` is given one and passes it to every ``Machine``; the core never imports an implementation.
    ``bootstrap.provisioner.RuntimeProvisioner`` (our bundled runtime) and ``bootstrap.dockerengine.
    DockerEngineProvisioner`` (``--engine docker``) implement it; ``machines.default`` picks one per machine.
    """

    def check_options(self, options: HostOptions) -> None:
        """Refuse (``UsageError``) engine options this engine cannot honour; called before anything is made."""

    def engine_config(self, options: HostOptions) -> dict[str, Any]:
        """The engine configuration these options give on a host (what ``engine_config_on_host`` would read)."""

    def engine_config_on_host(self, machine: Machine) -> dict[str, Any] | None:
        """The engine configuration the host has now (``None``: none), for ``machines set --dry-run``."""

    def provision(self, machine: Machine, progress: Progress) -> None:
        """Install or repair the engine and wait until its API answers. Idempotent: create, ``machines provision``,
        and after ``start``/``restart`` (new server certificate when the address changed)."""

    def upgrade(self, machine: Machine, progress: Progress) -> None:
        """Install this version's engine and restart it; containers, images and volumes stay."""

    def regenerate_certs(self, machine: Machine, progress: Progress) -> None:
        """Issue a new server certificate for the machine's current addresses and restart the engine on it."""

    def rotate_client_certs(self, store: Store) -> None:
        """Replace the store's CA and client certificate (every machine then needs ``regenerate_certs``)."""

    def env(self, machine: Machine, *, ssh: bool, unset: bool, no_proxy: bool) -> dict[str, str | None]:
        """The environment variables that point docker clients at the machine (``None``: unset the variable)."""

    def client_flags(self, machine: Machine) -> list[str]:
        """The docker client flags that reach the machine over mutual TLS (``machines config``)."""

    def local_docker_hosts(self, machine: Machine) -> set[str]:
        """``DOCKER_HOST`` values served on this computer for the machine (a forwarded socket), for ``active``."""

    def release(self, machine: Machine) -> None:
        """Stop whatever runs on this computer for the machine (``rm``)."""

    def daemon_log(self, machine: Machine) -> str:
        """Where the engine's daemon writes its log on the host (``machines logs``)."""


class Machine:
    """One machine of the store: its record (``config.json``), its driver and an SSH connection to it.

    ``record`` is the parsed ``config.json``; its ``"runtime"`` dict belongs to the provisioner (version, api mode,
    data root, ports). Change it, then call ``save()``. Without a ``provisioner`` the machine is a bare SSH host:
    provisioning steps are skipped and the commands that need one (``env``, ``upgrade``...) refuse.
    """

    def __init__(
        self,
        store: Store,
        record: dict[str, Any],
        driver: Driver | None = None,
        provisioner: Provisioner | None = None,
    ) -> None:
        self.store = store
        self.record = record
        self.name: str = record["name"]
        self.dir: Path = store.machine_dir(self.name)
        self._driver = driver
        self._provisioner = provisioner
        self._connection: Connection | None = None
        self._lock = threading.Lock()
        self.signing_keys: tuple[tuple[str, bytes], ...] = ()  # to install at the next provisioning; never saved

    def __repr__(self) -> str:
        return f"Machine({self.name!r}, driver={self.driver_name!r})"

    @property
    def driver_name(self) -> str:
        return str(self.record["driver_name"])

    @property
    def driver(self) -> Driver:
        if self._driver is None:
            driver_class = registry.get(self.driver_name)
            self._driver = driver_class(
                self.name,
                str(self.dir),
                self.record.get("driver") or {},
                discovered=self.record.get("driver_state") or {},
                host_options=self.host_options,
            )
        return self._driver

    @property
    def host_options(self) -> HostOptions:
        """What the user chose at create (API mode, certificate names, labels, data root)."""
        return HostOptions.from_record(self.record.get("host_options"))

    @property
    def runtime(self) -> dict[str, Any]:
        """The provisioner's part of the record: version, api mode (``"tls"``/``"ssh"``), port, data root..."""
        runtime: dict[str, Any] = self.record.setdefault("runtime", {})
        return runtime

    @property
    def provisioner(self) -> Provisioner:
        """The provisioner this machine was loaded with; ``StateError`` when it has none."""
        if self._provisioner is None:
            raise StateError(f"machine {self.name!r} was loaded without a provisioner: use machines.Machines")
        return self._provisioner

    @property
    def is_ready(self) -> bool:
        return self.record.get("state") == STATE_READY

    @property
    def key_path(self) -> Path:
        """The machine's own private key (ed25519, made at create)."""
        return self.dir / KEY_FILE

    def save(self) -> None:
        """Persist the record, with the driver's flags and what it discovered."""
        if self._driver is not None:
            self.record["driver"] = dict(self._driver.flag_values)
            self.record["driver_state"] = dict(self._driver.discovered)
        self.store.save(self.name, self.record)

    # -- queries ----------------------------------------------------------------------------------------------
    def state(self) -> State:
        return self.driver.state()

    def ip(self) -> str:
        return self.driver.ip()

    def ssh_details(self) -> SSHDetails:
        return self.driver.ssh_details()

    def url(self) -> str:
        """Where the runtime's API answers: ``tcp://IP:2376``, or ``ssh://user@host:port`` for ``--api ssh``."""
        if self.runtime.get("api") == "ssh":
            details = self.ssh_details()
            return f"ssh://{details.user}@{details.host}:{details.port}"
        return self.driver.url(int(self.runtime.get("port") or DEFAULT_API_PORT))

    def docker_hosts(self) -> set[str]:
        """Every ``DOCKER_HOST`` value that points at this machine (its URL and its forwarded socket)."""
        hosts = self._provisioner.local_docker_hosts(self) if self._provisioner is not None else set()
        try:
            hosts.add(self.url())
        except MachinesError as error:
            log.debug("no URL for %s: %s", self.name, error)
        return hosts

    # -- SSH --------------------------------------------------------------------------------------------------
    def ssh(self, *, connect_timeout: float = 10.0) -> Connection:
        """A connected SSH connection (shared by callers of this object; it reconnects after ``close``)."""
        from machines.ssh import Connection

        pinned = self.record.get("ssh_host_key")
        if not pinned:
            raise SSHError(
                f"machine {self.name!r} has no recorded host key (its create did not finish); remove and re-create it"
            )
        with self._lock:
            if self._connection is None:
                self._connection = Connection(
                    self.ssh_details(), pinned, name=self.name, connect_timeout=connect_timeout
                )
            connection = self._connection
        return connection.connect()

    def wait_for_ssh(self, timeout: float = DEFAULT_SSH_TIMEOUT) -> Connection:
        """Wait until SSH answers with the pinned key; pins it first if the create has not yet."""
        from machines.ssh import wait_for_ssh

        known = self.record.get("ssh_host_key") or self.driver.initial_host_key()
        connection = wait_for_ssh(self.ssh_details(), known, timeout=timeout, name=self.name)
        if not self.record.get("ssh_host_key"):
            self.record["ssh_host_key"] = connection.seen_host_key
            self.save()
        with self._lock:
            if self._connection is not None:
                self._connection.close()
            self._connection = connection
        return connection

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # -- lifecycle --------------------------------------------------------------------------------------------
    def wait_for_state(self, wanted: State, timeout: float = DEFAULT_STATE_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        current: State | str = "unknown"
        while time.monotonic() < deadline:
            try:
                current = self.state()
            except DriverError as error:
                current = f"Error ({error})"
            if current == wanted:
                return
            time.sleep(0.1)
        raise MachineTimeoutError(f"timed out after {timeout:g}s waiting for {self.name} to be {wanted}; it is {current}")

    def start(self, progress: Progress | None = None, *, ssh_timeout: float = DEFAULT_SSH_TIMEOUT) -> None:
        progress = progress or Progress(self.name)
        with progress.phase("Starting"):
            self.close()
            self.driver.start()
            self.save()
            self.wait_for_state(State.RUNNING)
        self._after_start(progress, ssh_timeout)

    def stop(self, progress: Progress | None = None) -> None:
        progress = progress or Progress(self.name)
        with progress.phase("Stopping"):
            self.close()
            self.driver.stop()
            self.save()
            self.wait_for_state(State.STOPPED)

    def kill(self, progress: Progress | None = None) -> None:
        progress = progress or Progress(self.name)
        with progress.phase("Killing"):
            self.close()
            self.driver.kill()
            self.save()
            self.wait_for_state(State.STOPPED)

    def restart(self, progress: Progress | None = None, *, ssh_timeout: float = DEFAULT_SSH_TIMEOUT) -> None:
        """Start a stopped machine; otherwise the driver's restart. The IP may change (certificates follow)."""
        progress = progress or Progress(self.name)
        if self.state() == State.STOPPED:
            self.start(progress, ssh_timeout=ssh_timeout)
            return
        with progress.phase("Restarting"):
            self.close()
            self.driver.restart()
            self.save()
            self.wait_for_state(State.RUNNING)
        self._after_start(progress, ssh_timeout)

    def _after_start(self, progress: Progress, ssh_timeout: float) -> None:
        """Wait for SSH, then let the provisioner bring the engine back (new certificates if the IP changed)."""
        with progress.phase("Waiting for SSH"):
            self.wait_for_ssh(ssh_timeout)
        if self._provisioner is not None and self.is_ready and self.runtime:
            self._provisioner.provision(self, progress)
        if self.record.get("mounts"):  # a stopped host lost its mounts: `machines mount` made them, make them again
            from machines import mounts

            for problem in mounts.restore(self):
                progress.note(problem)

    # -- provisioning ---------------------------------------------------------------------------------------
    def provision(self, progress: Progress | None = None) -> None:
        """Install or repair the engine (idempotent)."""
        self.provisioner.provision(self, progress or Progress(self.name))

    def upgrade(self, progress: Progress | None = None) -> None:
        """Install this version's engine and restart it; containers, images and volumes stay."""
        self.provisioner.upgrade(self, progress or Progress(self.name))

    def daemon_log(self) -> str:
        """The path of the engine daemon's log on the host."""
        return self.provisioner.daemon_log(self)

    def regenerate_certs(self, progress: Progress | None = None) -> None:
        """New server certificate for the current addresses; the engine restarts on it."""
        self.provisioner.regenerate_certs(self, progress or Progress(self.name))

    def plan(self, options: HostOptions, driver_flags: dict[str, Any] | None = None) -> list[str]:
        """``machines set --dry-run``: what would change, recorded against wanted, and whether the host differs."""
        lines = hostoptions.plan(self.host_options, options)
        lines += [f"{self.driver_name} {key}: {self.driver.flag_values.get(key)} -> {value}"
                  for key, value in (driver_flags or {}).items() if self.driver.flag_values.get(key) != value]
        if self._provisioner is not None and self.runtime:
            on_host = self.provisioner.engine_config_on_host(self)
            expected = self.provisioner.engine_config(self.host_options)
            if on_host is None:
                lines.append("on the host: no engine configuration; 'machines provision' or this set writes it")
            elif on_host != expected:
                drift = sorted(key for key in {**on_host, **expected} if on_host.get(key) != expected.get(key))
                lines.append(f"on the host: {', '.join(drift)} differ from the record; 'machines provision' or this "
                             "set puts the recorded values back")
        return lines

    def set(self, options: HostOptions, driver_flags: dict[str, Any] | None = None,
            progress: Progress | None = None) -> None:
        """Change what can change after create, record it and apply it with the safety of ``upgrade``.

        Driver changes go first (``Driver.change``, which refuses what the driver cannot do). Engine options,
        labels and TLS SANs are then applied by re-provisioning: the daemon restarts, containers keep running. If
        the daemon does not come back, the previous options are recorded and applied again, and the error says so.
        On a machine that is not running they are recorded, and ``start`` applies them.
        """
        progress = progress or Progress(self.name)
        previous = self.host_options
        if options.api != previous.api:
            raise UsageError(f"--api cannot change after create ({self.name} uses {previous.api}): re-create it")
        if options.engine_data_root != previous.engine_data_root:
            raise UsageError("the data root cannot change after create: containers, images and volumes live there")
        self.provisioner.check_options(options)
        if options.signing_keys and self.state() != State.RUNNING:
            raise UsageError(f"{self.name} is not running: start it first, signing keys are installed on the host "
                             "and never recorded")
        if driver_flags:
            with progress.phase(f"Changing the host ({self.driver_name})"):
                self.driver.change(driver_flags)
                self.driver.flag_values.update(driver_flags)
                self.save()
        if options == previous:
            return
        self.record["host_options"] = options.to_record()
        self.save()
        self.signing_keys = options.signing_keys
        if self.state() != State.RUNNING:  # start provisions, so it applies them (and reports a bad one)
            progress.note(f"{self.name} is not running: the new options are recorded and applied when it starts")
            return
        try:
            self._apply_options(previous, progress)
        except StateError:  # refused before anything on the host changed (an imported machine...)
            self.record["host_options"] = previous.to_record()
            self.save()
            raise
        except MachinesError as error:
            self.record["host_options"] = previous.to_record()
            self.save()
            self.signing_keys = ()  # the previous policy's keys are the host's own
            try:
                self._apply_options(options, progress)
            except MachinesError as again:
                raise ProvisionError(f"{error}; putting the previous options back failed too: {again}") from None
            raise ProvisionError(f"{error}; the previous options were put back") from None

    def _apply_options(self, other: HostOptions, progress: Progress) -> None:
        """Provision with the recorded options; a new server certificate when the SANs differ from ``other``'s."""
        if self.host_options.api_over_tls and set(self.host_options.tls_san) != set(other.tls_san):
            self.provisioner.regenerate_certs(self, progress)
        else:
            self.provisioner.provision(self, progress)

    def env(self, *, ssh: bool = False, unset: bool = False, no_proxy: bool = False) -> dict[str, str | None]:
        """Variables that point docker clients at this machine (``unset``: the ones to remove)."""
        return self.provisioner.env(self, ssh=ssh, unset=unset, no_proxy=no_proxy)

    def client_flags(self) -> list[str]:
        """Docker client flags that reach this machine over mutual TLS."""
        return self.provisioner.client_flags(self)


class Machines:
    """The store of machines and the operations on them, provisioned by ``provisioner``.

    Without a provisioner, creates stop once SSH answers. ``machines.Machines`` (``machines.default``) is this
    class with the default provisioner: what a Python user imports.
    """

    def __init__(
        self, storage_path: str | os.PathLike[str] | None = None, provisioner: Provisioner | None = None
    ) -> None:
        self.store = Store(storage_path)
        self.provisioner = provisioner

    def get(self, name: str) -> Machine:
        validate_name(name)
        return Machine(self.store, self.store.load(name), provisioner=self.provisioner)

    def list(self) -> list[Machine]:
        """Every machine with a readable record, by name (entries removed meanwhile are skipped)."""
        machines = []
        for name in self.store.names():
            try:
                machines.append(self.get(name))
            except MachinesError as error:
                log.warning("skipping %s: %s", name, error)
        return machines

    def create(
        self,
        name: str,
        driver_name: str = DEFAULT_DRIVER,
        flags: dict[str, Any] | None = None,
        *,
        host_options: HostOptions | None = None,
        keep_on_error: bool = False,
        provision: bool = True,
        ssh_timeout: float = DEFAULT_SSH_TIMEOUT,
        progress: Progress | None = None,
        cancelled: threading.Event | None = None,
        provision_script: str | os.PathLike[str] | None = None,
        cloud_config: str | os.PathLike[str] | None = None,
    ) -> Machine:
        """Make a machine, all or nothing. ``flags`` are driver flag values by key (``Flag.key()``).

        Validation (name, duplicate, driver, the driver's pre-create check) happens before anything is written.
        ``cancelled`` lets a caller running several creates abort this one between phases (it rolls back).
        ``provision_script``: a shell script run as root once provisioning is done (its failure rolls the create
        back). ``cloud_config``: user data for drivers that boot with cloud-init (``Driver.cloud_config_flag``).
        """
        validate_name(name)
        driver_class = registry.get(driver_name)
        if self.store.exists(name):
            raise MachineExistsError(f"machine {name!r} already exists")
        script = _read_script(provision_script) if provision_script is not None else None
        flags = dict(flags or {})
        if cloud_config is not None:
            flags.update(_cloud_config_flag(driver_class, str(cloud_config), flags))
        config = driver_class.flag_defaults()
        config.update({key: value for key, value in flags.items() if value is not None})
        options = host_options or HostOptions()
        if provision and self.provisioner is not None:
            self.provisioner.check_options(options)
        driver = driver_class(name, str(self.store.machine_dir(name)), config, host_options=options)
        driver.pre_create_check()
        progress = progress or Progress(name)

        record = new_record(name, driver_name, dict(driver.flag_values), options.to_record())
        record["driver_state"] = dict(driver.discovered)  # what pre_create_check found (an AMI, a VPC...)
        self.store.reserve(record)
        machine = Machine(self.store, self.store.load(name), driver=driver, provisioner=self.provisioner)
        machine.signing_keys = options.signing_keys

        def persist_ledger(descriptions: list[str]) -> None:
            machine.record["ledger"] = descriptions
            machine.save()

        ledger = Ledger(on_change=persist_ledger)

        def checkpoint() -> None:
            if cancelled is not None and cancelled.is_set():
                raise KeyboardInterrupt

        try:
            generate_ssh_key(machine.dir, f"machines-{name}")
            with progress.phase(f"Creating host ({driver_name})"):
                driver.create(ledger)
                machine.save()
            checkpoint()
            with progress.phase("Waiting for SSH"):
                machine.wait_for_ssh(ssh_timeout)
            if driver.initial_host_key() is None:
                from machines.hostkeys import fingerprint

                progress.note(f"trusted the host key on first use: {fingerprint(machine.record['ssh_host_key'])}")
            checkpoint()
            if provision and self.provisioner is not None:
                self.provisioner.provision(machine, progress)
            elif provision:
                log.debug("no provisioner: %s is not provisioned", name)
            checkpoint()
            if script is not None:
                with progress.phase("provision script"):
                    _run_provision_script(machine, script, progress)
            checkpoint()
            machine.record.update(state=STATE_READY, ledger=[])
            machine.save()
        except BaseException as error:  # noqa: BLE001 - every failure, Ctrl-C included, must roll back
            machine.close()
            self._abort_create(machine, ledger, error, keep_on_error, progress)
            raise  # _abort_create raises; this keeps type checkers informed
        return machine

    def _abort_create(
        self, machine: Machine, ledger: Ledger, error: BaseException, keep_on_error: bool, progress: Progress
    ) -> None:
        cancelled = isinstance(error, KeyboardInterrupt)
        reason = "cancelled" if cancelled else str(error) or type(error).__name__
        if keep_on_error:
            machine.record["error"] = reason
            machine.save()
            progress.note(f"create failed; kept its resources for debugging ({', '.join(ledger.descriptions())})")
            if cancelled:
                raise CancelledError(f"create of {machine.name} cancelled; resources kept (--keep-on-error)") from None
            raise error
        with progress.phase("Rolling back"):
            failures = ledger.rollback()
        if failures:
            machine.record.update(state=STATE_FAILED, error=reason, cleanup_errors=failures)
            machine.save()
            raise DriverError(
                f"create of {machine.name} failed ({reason}) and its cleanup too ({'; '.join(failures)}); "
                f"run 'machines rm -f {machine.name}' to retry the cleanup"
            ) from error
        self.store.delete(machine.name)
        if cancelled:
            raise CancelledError(f"create of {machine.name} cancelled; everything it made was removed") from None
        raise error

    def remove(self, name: str, *, force: bool = False, progress: Progress | None = None) -> None:
        """Delete the machine's resources (driver ``remove``) and its store entry.

        Works on leftovers of a crashed create too. With ``force`` the entry goes even when the driver fails (or is
        not installed any more).
        """
        progress = progress or Progress(name)
        machine = self.get(name)
        with progress.phase("Removing"):
            machine.close()
            if self.provisioner is not None:
                self.provisioner.release(machine)
            if machine.record.get("mounts"):
                from machines import mounts

                for problem in mounts.release(machine):
                    progress.note(f"{problem}; removing the machine anyway")
            try:
                machine.driver.remove()
            except MachinesError as error:
                if not force:
                    raise DriverError(f"cannot remove {name}: {error} (use -f to forget it anyway)") from None
                progress.note(f"driver could not remove its resources ({error}); forgetting the machine anyway")
            self.store.delete(name)
            contexts.remove(name, self.store.root)  # the docker context `machines context` made, if any

    def start(self, name: str, progress: Progress | None = None) -> None:
        self.get(name).start(progress)

    def stop(self, name: str, progress: Progress | None = None) -> None:
        self.get(name).stop(progress)

    def restart(self, name: str, progress: Progress | None = None) -> None:
        self.get(name).restart(progress)

    def kill(self, name: str, progress: Progress | None = None) -> None:
        self.get(name).kill(progress)

    def state(self, name: str) -> State:
        return self.get(name).state()

    def rotate_client_certs(self) -> None:
        """Replace the store's CA and client certificate (then ``regenerate_certs`` every machine)."""
        if self.provisioner is None:
            raise StateError("these machines have no provisioner: there are no certificates to rotate")
        self.provisioner.rotate_client_certs(self.store)


def _read_script(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise UsageError(f"--provision-script {path}: {reason}") from None


def _cloud_config_flag(driver_class: type[Driver], path: str, flags: dict[str, Any]) -> dict[str, Any]:
    """``--cloud-config FILE`` as the driver's own user-data flag (``--aws-userdata``...), which stays an alias."""
    key = driver_class.cloud_config_flag
    if key is None:
        raise UsageError(f"the {driver_class.name} driver does not boot with cloud-init: "
                         "use --provision-script to change the host after provisioning")
    if flags.get(key) not in (None, path):
        raise UsageError(f"--cloud-config and --{driver_class.name}-{key.replace('_', '-')} are the same setting: "
                         "give one")
    if not os.path.isfile(path):
        raise UsageError(f"--cloud-config {path}: no such file")
    return {key: path}


def _run_provision_script(machine: Machine, script: str, progress: Progress) -> None:
    """Run the user's script as root; its output goes to the create's log (``-v``), its failure rolls back."""
    result = machine.ssh().run("sh -s", sudo=True, check=False, input=script)
    for line in (result.stdout + result.stderr).splitlines():
        progress.detail(line)
    if not result.ok:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise ProvisionError(f"{machine.name}: the provision script exited {result.exit_status}"
                             + (f": {lines[-1]}" if lines else ""))


def run_concurrently(
    names: list[str], action: Callable[[str], T], *, cancelled: threading.Event | None = None
) -> dict[str, T | BaseException]:
    """Run ``action(name)`` for every name at once; each result or exception by name, in the given order.

    Ctrl-C sets ``cancelled`` (so actions can abort cleanly) and still waits for every action to finish, so that
    rollbacks complete before the process exits.
    """
    results: dict[str, T | BaseException] = {}
    finished = {name: threading.Event() for name in names}

    def work(name: str) -> None:
        try:
            results[name] = action(name)
        except BaseException as error:  # noqa: BLE001 - reported per machine by the caller
            results[name] = error
        finally:
            finished[name].set()

    if len(names) == 1:
        work(names[0])
        return results
    for name in names:
        threading.Thread(target=work, args=(name,), name=f"machine {name}").start()
    # Events, not Thread.join: an interrupted join can report a live thread as finished (CPython gh-90882).
    for done in finished.values():
        while True:
            try:
                if done.wait(0.5):
                    break
            except KeyboardInterrupt:
                if cancelled is not None:
                    cancelled.set()
    return {name: results[name] for name in names}
