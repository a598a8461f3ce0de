"""``machines set``: change a machine's engine options, labels, TLS names and what its driver can change."""

# No "from __future__ import annotations" here: Typer reads the real annotation objects of the built signature.
import dataclasses
import inspect
from typing import Annotated, Any

import typer

from machines import hostoptions
from machines.cli.common import echo, for_each_machine, machines
from machines.cli.create import driver_flags_of, driver_parameters
from machines.cli.engine import (
    EngineEnv,
    EngineInsecureRegistry,
    EngineOpt,
    EngineProxy,
    EngineRegistryMirror,
    EngineSigningPassphraseFile,
    EngineSigningPolicy,
    signing_options,
    with_proxy,
)
from machines.drivers import registry
from machines.progress import Progress


def register(app: typer.Typer, *, driver_flags: bool = True) -> None:
    drivers = registry.available() if driver_flags else {}

    def set_command(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="Machine name.")],
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would change; change nothing.")] = False,
        engine_label: Annotated[list[str] | None, typer.Option(
            "--engine-label", metavar="KEY=VALUE", help="Labels KEY=VALUE of the engine: the ones given replace the recorded ones.")] = None,
        tls_san: Annotated[list[str] | None, typer.Option(
            "--tls-san", metavar="NAME|IP", help="Extra names or IPs of the server certificate (replace the recorded ones; the "
                              "certificate is re-issued).")] = None,
        engine_env: EngineEnv = None,
        engine_insecure_registry: EngineInsecureRegistry = None,
        engine_registry_mirror: EngineRegistryMirror = None,
        engine_opt: EngineOpt = None,
        engine_proxy: EngineProxy = None,
        engine_trust_policy: Annotated[str | None, typer.Option(
            "--engine-trust-policy", metavar="POLICY.JSON", help="Replace the image trust policy (containers-policy.json)"
                                                                 " the runtime enforces; \"\" removes it.")] = None,
        engine_signing_policy: EngineSigningPolicy = None,
        engine_signing_passphrase_file: EngineSigningPassphraseFile = None,
        **driver_values: Any,
    ) -> None:
        """Change a running machine: engine options, labels, TLS SANs, driver settings. Containers keep running;
        a daemon that does not come back with the new options is put back on the previous ones.

        A list option given replaces the recorded list; --engine-opt KEY=VALUE replaces that key (KEY= removes it).
        """
        machine = machines().get(name)
        recorded = machine.host_options
        wanted = hostoptions.changed(
            recorded, tls_san=tls_san, labels=engine_label, env=engine_env,
            insecure_registries=engine_insecure_registry, registry_mirrors=engine_registry_mirror,
            opts=engine_opt or (),
        )
        wanted = dataclasses.replace(wanted, engine=with_proxy(wanted.engine, engine_proxy))
        if engine_trust_policy is not None:
            from machines.trust.policy import load_policy

            wanted = dataclasses.replace(wanted, trust_policy=load_policy(engine_trust_policy) if engine_trust_policy
                                         else None)
        wanted = dataclasses.replace(wanted, **signing_options(engine_signing_policy, engine_signing_passphrase_file))
        flags = driver_flags_of(ctx, machine.driver_name, drivers, driver_values, typed_only=True)
        try:
            if dry_run:
                lines = machine.plan(wanted, flags)
                echo("\n".join(lines) if lines else f"{name}: nothing to change")
                return

            def apply(_: str, progress: Progress) -> None:
                machine.set(wanted, flags, progress)

            for_each_machine([name], apply)
        finally:
            machine.close()
        echo(name)

    signature = inspect.signature(set_command)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    dynamic = driver_parameters(drivers)
    set_command.__signature__ = signature.replace(parameters=fixed + dynamic)  # type: ignore[attr-defined]
    set_command.__annotations__ = {**{p.name: p.annotation for p in fixed + dynamic}, "return": None}
    app.command("set", no_args_is_help=True)(set_command)
