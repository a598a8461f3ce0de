"""The engine-option flags that ``create`` and ``set`` share, and how they become ``EngineOptions``."""

# No "from __future__ import annotations" here: Typer reads the real annotation objects.
import os
from typing import Annotated, Any

import typer

from machines.errors import UsageError
from machines.hostoptions import EngineOptions

PANEL = "Engine options"
EngineEnv = Annotated[list[str] | None, typer.Option(
    "--engine-env", metavar="KEY=VALUE", rich_help_panel=PANEL,
    help="Variable in the engine's environment, e.g. HTTPS_PROXY=http://proxy:3128 (repeatable).")]
EngineInsecureRegistry = Annotated[list[str] | None, typer.Option(
    "--engine-insecure-registry", metavar="HOST[:PORT]|CIDR", rich_help_panel=PANEL,
    help="Registry the engine may reach over plain HTTP (repeatable).")]
EngineRegistryMirror = Annotated[list[str] | None, typer.Option(
    "--engine-registry-mirror", metavar="URL", rich_help_panel=PANEL,
    help="Mirror tried before Docker Hub for its images (repeatable).")]
EngineOpt = Annotated[list[str] | None, typer.Option(
    "--engine-opt", metavar="KEY=VALUE", rich_help_panel=PANEL,
    help="dockerd daemon.json option, e.g. bip=172.30.0.1/16, mtu=1400, default-address-pools=base=10.99.0.0/16,"
         "size=24 (repeatable).")]
EngineProxy = Annotated[str | None, typer.Option(
    "--engine-proxy", metavar="auto", rich_help_panel=PANEL,
    help="'auto': give the engine this computer's HTTP_PROXY, HTTPS_PROXY and NO_PROXY.")]
EngineSigningPolicy = Annotated[str | None, typer.Option(
    "--engine-signing-policy", metavar="FILE", rich_help_panel=PANEL,
    help="Sign docker push per registry scope (registries.d-style YAML/JSON: docker: {SCOPE: "
         "{sign-by-sigstore-private-key: KEY}}); the keys are decrypted here and installed on the host only. "
         "With set, \"\" removes it.")]
EngineSigningPassphraseFile = Annotated[str | None, typer.Option(
    "--engine-signing-passphrase-file", metavar="FILE", rich_help_panel=PANEL,
    help="Passphrase of the signing policy's keys (first line; else $COSIGN_PASSWORD, else a prompt).")]


def signing_options(policy: str | None, passphrase_file: str | None) -> dict[str, Any]:
    """``--engine-signing-policy`` as HostOptions fields: {} when not given, None fields when "" (removal)."""
    if policy is None:
        if passphrase_file is not None:
            raise UsageError("--engine-signing-passphrase-file goes with --engine-signing-policy")
        return {}
    if not policy:
        return {"signing_policy": None, "signing_keys": ()}
    from pathlib import Path

    from machines.trust.policy import load_signing_policy

    text, keys = load_signing_policy(policy, Path(passphrase_file) if passphrase_file else None)
    return {"signing_policy": text, "signing_keys": keys}


def engine_options(env: list[str] | None, insecure_registries: list[str] | None, mirrors: list[str] | None,
                   opts: list[str] | None, proxy: str | None) -> EngineOptions:
    """The flags as validated ``EngineOptions`` (``--engine-proxy auto`` adds this computer's proxy variables)."""
    options = EngineOptions(env=tuple(env or ()), insecure_registries=tuple(insecure_registries or ()),
                            registry_mirrors=tuple(mirrors or ()), opts=tuple(opts or ()))
    return with_proxy(options, proxy)


def with_proxy(options: EngineOptions, proxy: str | None) -> EngineOptions:
    """``--engine-proxy``: None leaves the options as they are; ``auto`` copies this computer's proxy variables."""
    if proxy is None:
        return options
    if proxy != "auto":
        raise UsageError(f"--engine-proxy takes 'auto', not {proxy!r}")
    return options.with_workstation_proxy(os.environ)
