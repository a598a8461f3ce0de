"""Commands that reach into machines from this computer: port (ports), ssh-config, context, use, completion, logs.

Each parses and prints; the work is in ``machines.ports``, ``machines.sshconfig``, ``machines.contexts`` and
``machines.completion``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from machines import completion, contexts, mounts, share, sshconfig
from machines import ports as ports_module
from machines.cli.common import echo, error_line, for_each_machine, machines
from machines.errors import MachinesError, StateError, UsageError
from machines.machine import Machine
from machines.store import atomic_write

Name = Annotated[str, typer.Argument(help="Machine name.")]


class _DefaultToAdd(typer.core.TyperGroup):
    """``machines port NAME SPEC`` is ``machines port add NAME SPEC``: a word that is no subcommand starts ``add``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["add", *args]
        return super().parse_args(ctx, args)


def start_port_watch(machine: Machine) -> ports_module.Background:
    """The detached ``auto`` watcher of the machine (``ports watch -d``, ``env --ports auto``)."""
    return ports_module.start(machine, "auto", ["--auto"], "auto")


def _port_app() -> typer.Typer:
    port_app = typer.Typer(
        cls=_DefaultToAdd,
        no_args_is_help=True,
        help="Forward ports between this computer's 127.0.0.1 and a machine over SSH: "
             "'machines port NAME 8080[:80]', ls, rm, watch.",
    )

    @port_app.command("add")
    def add(
        name: Name,
        spec: Annotated[str, typer.Argument(help="PORT or LISTEN:TARGET, e.g. 8080:80.")],
        reverse: Annotated[
            bool, typer.Option("--reverse", "-R", help="The machine's 127.0.0.1:LISTEN reaches TARGET here.")
        ] = False,
        udp: Annotated[bool, typer.Option("--udp", help="UDP (through a relay on the machine).")] = False,
    ) -> None:
        """Forward 127.0.0.1:LISTEN here to the machine's 127.0.0.1:TARGET (in the background, until rm)."""
        parsed = ports_module.PortSpec.parse(spec, reverse=reverse, udp=udp)
        machine = machines().get(name)
        machine.ssh().close()  # fail here, with the SSH error, rather than in the background
        arguments = [f"{parsed.listen}:{parsed.target}", *(["--reverse"] if parsed.reverse else []),
                     *(["--udp"] if parsed.udp else [])]
        ports_module.start(machine, parsed.key, arguments, str(parsed))
        echo(f"{name}: {parsed.describe()}")

    @port_app.command("ls")
    def list_ports(names: Annotated[list[str] | None, typer.Argument(help="Machine names (all by default).")] = None
                   ) -> None:
        """List the background forwards: machine and LISTEN:TARGET (``-R`` for reverse, ``auto`` for a watcher)."""
        echo("NAME\tPORTS")
        for machine in _chosen(names):
            for live in ports_module.running(machine):
                echo(live.as_row())

    @port_app.command("rm")
    def remove(
        name: Name,
        specs: Annotated[list[str] | None, typer.Argument(help="LISTEN ports, '-R LISTEN' is 'R:LISTEN', or auto.")]
        = None,
        every: Annotated[bool, typer.Option("--all", "-a", help="Every forward of the machine.")] = False,
    ) -> None:
        """Stop background forwards of a machine."""
        if not specs and not every:
            raise UsageError("name the forwards to remove (e.g. 8080, R:9000, auto) or give --all")
        machine = machines().get(name)
        if every:
            for stopped in ports_module.stop(machine):
                echo(f"{name}: removed {stopped.spec}")
            return
        for spec in specs or []:
            key = _key(spec)
            if not ports_module.stop(machine, key):
                raise UsageError(f"{name} has no forward {spec!r} (see 'machines port ls {name}')")
            echo(f"{name}: removed {spec}")

    @port_app.command("watch")
    def watch(
        name: Name,
        detach: Annotated[bool, typer.Option("--detach", "-d", help="Run in the background (until 'port rm').")]
        = False,
    ) -> None:
        """Forward every port a container publishes to the same port on 127.0.0.1, while the container runs."""
        machine = machines().get(name)
        if detach:
            start_port_watch(machine)
            echo(f"{name}: forwarding published ports in the background ('machines port rm {name} auto' stops it)")
            return
        def report(line: str) -> None:  # as it happens, also into a pipe
            echo(line)
            sys.stdout.flush()

        watcher = ports_module.PortWatcher(machine, report=report)
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.5)
        except KeyboardInterrupt:
            watcher.stop()
            thread.join(5)

    return port_app


def _chosen(names: list[str] | None) -> list[Machine]:
    """The named machines (each must exist), or every machine of the store."""
    library = machines()
    return [library.get(name) for name in names] if names else library.list()


def _key(spec: str) -> str:
    if spec == "auto":
        return "auto"
    reverse = spec.upper().startswith("R:")
    return ports_module.PortSpec.parse(spec[2:] if reverse else spec, reverse=reverse).key


def context_for(machine: Machine) -> None:
    """Create or update the machine's docker context (``env --context`` and ``machines context``)."""
    contexts.write(machine.name, machine.env(), machine.store.root)


def env_extras(machine: Machine, variables: dict[str, str | None], *, ports: str | None, context: bool,
               unset: bool) -> dict[str, str | None]:
    """``env --ports auto`` starts (``--unset``: stops) the port watcher; ``env --context`` writes the context and
    points ``DOCKER_CONTEXT`` at it instead of ``DOCKER_HOST`` (which would override any context)."""
    if ports not in (None, "auto"):
        raise UsageError(f"invalid --ports {ports!r}: the only choice is 'auto'")
    if unset:
        if ports:
            ports_module.stop(machine, "auto")
        return {**variables, "DOCKER_CONTEXT": None} if context else variables
    if ports:
        start_port_watch(machine)
    if not context:
        return variables
    contexts.write(machine.name, variables, machine.store.root)
    return {**variables, "DOCKER_TLS_VERIFY": None, "DOCKER_HOST": None, "DOCKER_CERT_PATH": None,
            "DOCKER_CONTEXT": machine.name}


def _mount_app() -> typer.Typer:
    mount_app = typer.Typer(cls=_DefaultToAdd, no_args_is_help=True,
                            help="Mount a folder of this computer into a machine: 'machines mount NAME ./src:/src', ls.")

    @mount_app.command("add")
    def add(
        name: Name,
        spec: Annotated[str, typer.Argument(help="SOURCE:TARGET, e.g. ./src:/src.")],
        readonly: Annotated[bool, typer.Option("--ro", help="Read-only in the machine.")] = False,
    ) -> None:
        """Mount a folder here at TARGET in the machine, live; made again after 'machines start'."""
        mount = mounts.parse(spec, readonly=readonly)
        mounts.mount(machines().get(name), mount)
        echo(f"{name}: {mount.describe()}")

    @mount_app.command("ls")
    def list_mounts(name: Name) -> None:
        """List a machine's mounted folders: SOURCE:TARGET[:ro]."""
        for mount in mounts.recorded(machines().get(name)):
            echo(mount.describe())

    return mount_app


def register(app: typer.Typer) -> None:
    port_app = _port_app()
    app.add_typer(port_app, name="port")
    app.add_typer(port_app, name="ports", hidden=True)
    app.add_typer(_mount_app(), name="mount")

    @app.command("export")
    def export_command(
        name: Name,
        output: Annotated[Path, typer.Option("--output", "-o", help="The file to write (0600).")],
        passphrase_file: Annotated[
            Path | None, typer.Option("--passphrase-file", help="Read the passphrase from this file's first line.")
        ] = None,
    ) -> None:
        """Write a machine entry (record, SSH keys, certificates) to a passphrase-encrypted file."""
        machine = machines().get(name)
        data = share.export(machine, share.read_passphrase(passphrase_file, confirm=True))
        atomic_write(output.resolve(), data, mode=0o600)
        echo(f"{name}: exported to {output}")

    @app.command("import")
    def import_command(
        file: Annotated[Path, typer.Argument(help="A file 'machines export' wrote.")],
        name: Annotated[str | None, typer.Option("--name", help="Import under another name.")] = None,
        passphrase_file: Annotated[
            Path | None, typer.Option("--passphrase-file", help="Read the passphrase from this file's first line.")
        ] = None,
    ) -> None:
        """Add a machine entry from a file 'machines export' wrote."""
        try:
            data = file.read_bytes()
        except OSError as error:
            raise UsageError(f"cannot read {file}: {error.strerror}") from None
        machine = share.import_(machines(), data, share.read_passphrase(passphrase_file, confirm=False), name)
        echo(machine.name)

    @app.command("share")
    def share_command(
        name: Name,
        to: Annotated[str, typer.Option("--to", help="Who the certificate is for (its common name).")],
        expires: Annotated[str, typer.Option("--expires", help="Validity: 30d, 12h, 2w.")] = "30d",
        output: Annotated[
            Path | None, typer.Option("--output", "-o", help="Folder for ca.pem, cert.pem, key.pem [./NAME-USER].")
        ] = None,
    ) -> None:
        """Issue someone a client certificate of their own for a machine (the CA key stays here)."""
        from machines.bootstrap import sharing

        user, validity = share.validate_user(to), share.parse_validity(expires)
        library = machines()
        machine = library.get(name)
        share.check_shareable(library, machine)
        folder = (output or Path(f"{name}-{user}")).resolve()
        entry = sharing.share(machine.store.root, name, user, validity, folder)
        echo(f"# certificate {entry['serial']} for {to}, valid until {entry['expires']}; give them {folder}:")
        echo(f"export DOCKER_HOST={machine.url()}\nexport DOCKER_TLS_VERIFY=1\nexport DOCKER_CERT_PATH={folder}")

    @app.command()
    def revoke(
        name: Name,
        user: Annotated[str, typer.Argument(help="Whose certificates ('machines share --to USER').")],
    ) -> None:
        """Take back the certificates shared with USER: every TLS machine of the store gets the revocation list."""
        from machines.bootstrap import sharing

        library = machines()
        if share.on_docker_engine(library.get(name)):
            raise StateError(f"machine {name!r} runs Docker Engine, which cannot check a revocation list: "
                             "'machines share' never shares it")
        revoked = sharing.revoke(library.store.root, name, user)
        echo(f"revoked {', '.join(entry['serial'] for entry in revoked)} of {user}")
        targets = [machine.name for machine in library.list() if machine.runtime.get("api") == "tls"
                   and not share.on_docker_engine(machine) and machine.is_ready]
        for_each_machine(targets, lambda target, progress: library.get(target).provision(progress))

    @app.command()
    def umount(name: Name, target: Annotated[str, typer.Argument(help="The folder in the machine.")]) -> None:
        """Unmount a folder 'machines mount' made."""
        mount = mounts.umount(machines().get(name), target)
        echo(f"{name}: unmounted {mount.describe()}")

    @app.command("ssh-config")
    def ssh_config(names: Annotated[list[str] | None, typer.Argument(help="Machine names (all by default).")] = None
                   ) -> None:
        """Print OpenSSH Host blocks for machines, their host keys checked against files machines keeps."""
        for machine in _chosen(names):
            try:
                known_hosts = sshconfig.write_known_hosts(machine)
                echo(sshconfig.host_block(machine, known_hosts))
            except MachinesError as error:
                if names:
                    raise
                error_line(f"{machine.name}: {error}")

    @app.command()
    def context(name: Name) -> None:
        """Create or update the docker context NAME for a machine ('docker --context NAME ...')."""
        context_for(machines().get(name))
        echo(name)

    @app.command()
    def use(name: Name) -> None:
        """Make a machine's docker context the current one (creating it when needed), as 'docker context use'."""
        machine = machines().get(name)
        context_for(machine)
        contexts.use(name)
        echo(f'Current context is now "{name}"')

    @app.command("completion")
    def completion_script(
        shell: Annotated[str, typer.Argument(help="bash, zsh or fish.")],
    ) -> None:
        """Print the shell completion script: 'source <(machines completion bash)'."""
        echo(completion.script(shell))

    @app.command()
    def logs(
        name: Name,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
        tail: Annotated[str, typer.Option("--tail", "-n", help="Lines from the end, or 'all'.")] = "all",
    ) -> None:
        """Show the engine daemon's log on the machine (our runtime's, or dockerd's on --engine docker machines)."""
        if tail != "all" and not tail.isdigit():
            raise UsageError(f"invalid --tail {tail!r}: a number of lines or 'all'")
        count = "+1" if tail == "all" else tail
        machine = machines().get(name)
        connection = machine.ssh()
        try:
            command = f"tail -n {count} {'-F ' if follow else ''}{machine.daemon_log()}"
            status = connection.stream(connection.wrap_sudo(command))
        except KeyboardInterrupt:
            status = 0
        finally:
            connection.close()
        raise typer.Exit(status)
