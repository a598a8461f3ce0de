"""The Typer application: every command module registered, errors mapped to exit statuses in one place.

Each module of this package registers one group of commands with ``register(app)``; ``provisioning`` holds env,
config, regenerate-certs, provision and upgrade (which the machine's provisioner carries out).
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Annotated

import typer

from machines import completion
from machines.cli import (
    change,
    common,
    create,
    declarative,
    info,
    lifecycle,
    provisioning,
    reach,
    remote,
    scan,
    swarm,
    trust,
)
from machines.cli.common import error_line, exit_status_of, settings
from machines.errors import ExitStatus, MachinesError


def build_app(*, driver_flags: bool = True) -> typer.Typer:
    """A fresh app; built per run because the create flags come from the drivers installed now.

    ``driver_flags=False`` skips importing every driver (some pull in big SDKs) for commands other than create.
    """
    app = typer.Typer(
        name="machines",
        help="Create container hosts anywhere and run containers on them with the tools you already know.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def global_options(
        storage_path: Annotated[
            Path | None,
            typer.Option("--storage-path", "-s", envvar="MACHINES_STORAGE_PATH", show_envvar=True,
                         help="Where machines are kept \\[default: ~/.machines]."),
        ] = None,
        debug: Annotated[
            bool, typer.Option("--debug", "-D", envvar="MACHINES_DEBUG", help="Log everything; tracebacks on errors.")
        ] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the details of each phase.")] = False,
    ) -> None:
        settings.storage_path = storage_path
        settings.debug = debug
        settings.verbose = verbose
        common.configure_logging(debug)

    create.register(app, driver_flags=driver_flags)
    change.register(app, driver_flags=driver_flags)
    for module in (info, lifecycle, remote, provisioning, reach, declarative, swarm, trust, scan):
        module.register(app)
    return app


def main(args: list[str]) -> int:
    """Run the command ``args`` through Typer; returns the exit status."""
    settings.debug = any(arg in ("--debug", "-D") for arg in args) or bool(_env_flag("MACHINES_DEBUG"))
    try:
        completing = completion.requested()  # a shell's TAB: Typer's entry point answers and exits
        if completing:
            completion.init()
        words = [*args, *(completion.words().split() if completing else [])]  # driver flags: create and set
        command = typer.main.get_command(build_app(driver_flags="create" in words or "set" in words))
        completion.attach(command)
        result = command.main(args=args, prog_name="machines", standalone_mode=False)
        return result if isinstance(result, int) else int(ExitStatus.OK)
    except MachinesError as error:
        _show_traceback()
        error_line(str(error))
        return int(error.exit_status)
    except typer.TyperException as error:  # Typer's own usage errors: bad or missing options
        error_line(error.format_message())
        return error.exit_code
    except typer.Abort:
        error_line("aborted")
        return int(ExitStatus.ERROR)
    except KeyboardInterrupt as error:
        return exit_status_of(error)
    except Exception as error:  # noqa: BLE001 - a bug: one line, the traceback only with --debug
        _show_traceback()
        error_line(f"unexpected {type(error).__name__}: {error}" + ("" if settings.debug else " (run with --debug for details)"))
        return int(ExitStatus.ERROR)


def _show_traceback() -> None:
    if settings.debug:
        traceback.print_exc()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")
