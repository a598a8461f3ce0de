"""``machines create``: its shared flags plus every installed driver's flags as ``--<driver>-<flag>``.

The driver flags are only known at run time (drivers are plugins), so the command's signature is built from the
registry when the app is built: Typer then shows them in ``create --help`` with their env vars, one panel per driver.
"""

# No "from __future__ import annotations" here: Typer reads the real annotation objects of the built signature.
import inspect
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from machines import swarm
from machines.cli.common import echo, err_console, for_each_machine, machines
from machines.cli.engine import (
    EngineEnv,
    EngineInsecureRegistry,
    EngineOpt,
    EngineProxy,
    EngineRegistryMirror,
    EngineSigningPassphraseFile,
    EngineSigningPolicy,
    engine_options,
    signing_options,
)
from machines.drivers import registry
from machines.drivers.base import Driver, Flag
from machines.errors import UsageError
from machines.hostoptions import HostOptions
from machines.machine import DEFAULT_DRIVER, DEFAULT_SSH_TIMEOUT
from machines.progress import Progress, escape

_FLAG_TYPES: dict[type, Any] = {str: str | None, int: int | None, bool: bool | None, list: list[str] | None}


def _parameter_name(driver_name: str, flag: Flag) -> str:
    return f"flag__{driver_name.replace('-', '_')}__{flag.key()}"


def driver_parameters(drivers: dict[str, type[Driver]]) -> list[inspect.Parameter]:
    parameters = []
    for driver_name, driver_class in drivers.items():
        # amazonec2 is another name of aws: its flags are accepted but listed only under aws.
        alias = driver_name != driver_class.name and drivers.get(driver_class.name) is driver_class
        for flag in driver_class.flags:
            help_text = flag.help + ("" if flag.default in (None, [], "") or flag.secret else f" [default: {flag.default}]")
            option = typer.Option(
                flag.option_name(driver_name),
                help=escape(help_text),  # a driver's help is plain text, not rich markup
                envvar=flag.envvar,
                show_envvar=bool(flag.envvar),
                rich_help_panel=f"{driver_name} driver",
                hidden=alias,
            )
            annotation = Annotated[_FLAG_TYPES[flag.type], option]  # type: ignore[valid-type,name-defined]
            parameters.append(
                inspect.Parameter(
                    _parameter_name(driver_name, flag), inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
                )
            )
    return parameters


def driver_flags_of(ctx: typer.Context, driver_name: str, drivers: dict[str, type[Driver]], values: dict[str, Any],
                  *, typed_only: bool = False) -> dict[str, Any]:
    """The chosen driver's flag values by key; a flag of another driver typed on the command line is an error.

    ``typed_only``: only flags typed on the command line (``set`` changes nothing an env var happens to hold).
    """
    chosen: dict[str, Any] = {}
    for name, driver_class in drivers.items():
        for flag in driver_class.flags:
            value = values.get(_parameter_name(name, flag))
            if typed_only and not _typed(ctx, _parameter_name(name, flag)):
                continue
            if name == driver_name:
                if value is not None and not (flag.type is list and not value):
                    chosen[flag.key()] = list(value) if flag.type is list else value
            elif value not in (None, []) and _typed(ctx, _parameter_name(name, flag)):
                raise UsageError(f"{flag.option_name(name)} belongs to the {name} driver, but the driver is {driver_name}")
    return chosen


def _typed(ctx: typer.Context, parameter: str) -> bool:
    source = ctx.get_parameter_source(parameter)
    return source is not None and source.name == "COMMANDLINE"


def register(app: typer.Typer, *, driver_flags: bool = True) -> None:
    drivers = registry.available() if driver_flags else {}

    def create(
        ctx: typer.Context,
        names: Annotated[list[str], typer.Argument(help="Names of the machines to create (created in parallel).")],
        driver: Annotated[
            str, typer.Option("--driver", "-d", envvar="MACHINES_DRIVER", show_envvar=True,
                              help=f"Driver: {', '.join(drivers) or 'none installed'}.")
        ] = DEFAULT_DRIVER,
        keep_on_error: Annotated[
            bool, typer.Option("--keep-on-error", help="Keep what a failed create made, for debugging.")
        ] = False,
        no_provision: Annotated[
            bool, typer.Option("--no-provision", help="Stop once SSH answers; install no runtime.")
        ] = False,
        timeout_ssh: Annotated[
            float, typer.Option("--timeout-ssh", envvar="MACHINES_TIMEOUT_SSH", help="Seconds to wait for SSH.")
        ] = DEFAULT_SSH_TIMEOUT,
        engine_label: Annotated[
            list[str] | None, typer.Option("--engine-label", help="Label KEY=VALUE for the runtime (repeatable).")
        ] = None,
        engine_env: EngineEnv = None,
        engine_insecure_registry: EngineInsecureRegistry = None,
        engine_registry_mirror: EngineRegistryMirror = None,
        engine_opt: EngineOpt = None,
        engine_proxy: EngineProxy = None,
        provision_script: Annotated[
            str | None, typer.Option("--provision-script", metavar="FILE",
                                     help="Shell script run as root after provisioning (its failure rolls back).")
        ] = None,
        cloud_config: Annotated[
            str | None, typer.Option("--cloud-config", metavar="FILE",
                                     help="cloud-init user data (script or cloud-config) for drivers that boot with "
                                          "cloud-init (aws, azure); run after ours.")
        ] = None,
        tls_san: Annotated[
            list[str] | None, typer.Option("--tls-san", help="Extra name or IP in the server certificate.")
        ] = None,
        api: Annotated[
            str, typer.Option("--api", help="'tls': API on TCP 2376 with mutual TLS; 'ssh': only over SSH.")
        ] = "tls",
        engine: Annotated[
            str | None, typer.Option("--engine", envvar="MACHINES_ENGINE", show_envvar=True,
                                     help="'machines': our bundled runtime (the default, for single hosts); 'docker': "
                                          "Docker Engine from the host's packages (for 'machines swarm'; the default "
                                          "with --swarm-manager).")
        ] = None,
        swarm_manager: Annotated[
            str | None, typer.Option("--swarm-manager", metavar="MACHINE",
                                     help="Join the swarm of this manager once created (see 'machines swarm').")
        ] = None,
        swarm_role: Annotated[
            str, typer.Option("--swarm-role", help="Role in the swarm of --swarm-manager: 'worker' or 'manager'.")
        ] = "worker",
        runtime_data_root: Annotated[
            str | None, typer.Option(
                "--runtime-data-root", envvar="MACHINES_RUNTIME_DATA_ROOT", show_envvar=True, metavar="PATH",
                help="Absolute path on the host where the runtime keeps containers, images and volumes "
                     "\\[default: the driver's choice, else /var/lib/machines-runtime]. Container overlays need a "
                     "folder that is not itself on overlayfs: on hosts whose / is an overlay use e.g. /data/runtime.")
        ] = None,
        engine_trust_policy: Annotated[
            str | None, typer.Option(
                "--engine-trust-policy", metavar="POLICY.JSON",
                help="Image trust policy (containers-policy.json) the runtime enforces on pull, run and build FROM.")
        ] = None,
        engine_signing_policy: EngineSigningPolicy = None,
        engine_signing_passphrase_file: EngineSigningPassphraseFile = None,
        engine_scan: Annotated[
            str | None, typer.Option(
                "--engine-scan", metavar="LEVEL",
                help="Scan pulled and built images on arrival; refuse those with a vulnerability at or above LEVEL "
                     "(low, medium, high, critical). Needs --engine-scan-db.")
        ] = None,
        engine_scan_db: Annotated[
            str | None, typer.Option(
                "--engine-scan-db", metavar="DIR", help="OSV records (as for machines scan --db) to upload for "
                                                         "--engine-scan.")
        ] = None,
        **driver_values: Any,
    ) -> None:
        """Create machines: make the host, wait for SSH, install the runtime. All or nothing per machine."""
        from machines.trust.policy import load_policy

        host_options = HostOptions(
            api=api, tls_san=tuple(tls_san or ()), labels=tuple(engine_label or ()), data_root=runtime_data_root,
            engine=engine_options(engine_env, engine_insecure_registry, engine_registry_mirror, engine_opt,
                                  engine_proxy),
            engine_name=engine or ("docker" if swarm_manager else "machines"),
            trust_policy=load_policy(engine_trust_policy) if engine_trust_policy else None,
            **signing_options(engine_signing_policy or None, engine_signing_passphrase_file),
            scan_fail_on=engine_scan, scan_db=str(Path(engine_scan_db).expanduser().resolve()) if engine_scan_db else None,
        )
        if swarm_manager and (no_provision or host_options.engine_name != "docker"):
            raise UsageError("--swarm-manager needs a provisioned machine with --engine docker")
        if swarm_role not in swarm.ROLES:
            raise UsageError(f"--swarm-role must be 'worker' or 'manager', not {swarm_role!r}")
        flags = driver_flags_of(ctx, driver, drivers, driver_values)
        library = machines()
        if swarm_manager:
            swarm.managers(library, swarm_manager)  # before anything is made: it must name a swarm's manager
        cancelled = threading.Event()

        def make(name: str, progress: Progress) -> None:
            library.create(
                name, driver, flags, host_options=host_options, keep_on_error=keep_on_error,
                provision=not no_provision, ssh_timeout=timeout_ssh, progress=progress, cancelled=cancelled,
                provision_script=provision_script, cloud_config=cloud_config,
            )
            if swarm_manager:
                swarm.join_new(library, name, swarm_manager, swarm_role, keep=keep_on_error, progress=progress)

        for_each_machine(list(dict.fromkeys(names)), make, cancelled=cancelled)
        for name in dict.fromkeys(names):
            echo(name)
        hint = names[0] if len(names) == 1 else "NAME"
        err_console().print(f"Ready. Point your docker client at it: eval \"$(machines env {hint})\"")

    signature = inspect.signature(create)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    dynamic = driver_parameters(drivers)
    create.__signature__ = signature.replace(parameters=fixed + dynamic)  # type: ignore[attr-defined]
    create.__annotations__ = {**{p.name: p.annotation for p in fixed + dynamic}, "return": None}
    app.command(no_args_is_help=True)(create)
