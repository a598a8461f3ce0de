"""Shell completion for bash, zsh and fish through Typer's completion entry point (``_MACHINES_COMPLETE``).

``machines completion SHELL`` prints the script that the shell sources; at each TAB the shell runs ``machines``
with ``_MACHINES_COMPLETE=complete_<shell>`` and the words typed so far, and this module's callbacks answer:
machine names for every NAME argument, driver names for ``--driver``, shells for ``--shell``. Driver flags come
from the ``create`` command itself (built with them when the words hold ``create``). ``attach`` puts the callbacks
on the built command tree, so every command module's NAME argument completes without repeating them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from machines.shellenv import SHELLS

COMPLETE_VAR = "_MACHINES_COMPLETE"
SUPPORTED = ("bash", "zsh", "fish")
NAME_ARGUMENTS = {"name", "names"}


def requested() -> bool:
    """Whether this run answers a shell's TAB (not a command to run)."""
    return bool(os.environ.get(COMPLETE_VAR))


def words() -> str:
    """What the shell has typed so far, as it passes it (bash: COMP_WORDS; zsh and fish: _TYPER_COMPLETE_ARGS)."""
    return os.environ.get("COMP_WORDS") or os.environ.get("_TYPER_COMPLETE_ARGS") or ""


def script(shell: str) -> str:
    """The completion script ``shell`` sources (``source <(machines completion bash)``)."""
    from typer._completion_shared import get_completion_script

    if shell not in SUPPORTED:
        from machines.errors import UsageError

        raise UsageError(f"no completion for {shell!r}; choose one of {', '.join(SUPPORTED)}")
    return get_completion_script(prog_name="machines", complete_var=COMPLETE_VAR, shell=shell)


def _storage_path(ctx: Any) -> Path | None:
    """``--storage-path`` as typed (the app callback does not run while completing), else its variable."""
    value = ctx.find_root().params.get("storage_path") or os.environ.get("MACHINES_STORAGE_PATH")
    return Path(value) if value else None


def machine_names(ctx: Any, args: list[str], incomplete: str) -> list[str]:
    from machines.store import Store

    try:
        names = Store(_storage_path(ctx)).names()
    except Exception:  # noqa: BLE001 - a broken store completes nothing rather than printing a traceback at TAB
        return []
    return [name for name in names if name.startswith(incomplete)]


def driver_names(ctx: Any, args: list[str], incomplete: str) -> list[str]:
    from machines.drivers import registry

    return [name for name in registry.names() if name.startswith(incomplete)]


def shell_names(ctx: Any, args: list[str], incomplete: str) -> list[str]:
    return [name for name in SHELLS if name.startswith(incomplete)]


def _callback(param: Any) -> Callable[[Any, list[str], str], list[str]] | None:
    if param.param_type_name == "argument" and param.name in NAME_ARGUMENTS:
        return machine_names
    if param.param_type_name == "option" and "--driver" in param.opts:
        return driver_names
    if param.param_type_name == "option" and "--shell" in param.opts:
        return shell_names
    return None


def attach(command: Any) -> None:
    """Give every NAME argument, ``--driver`` and ``--shell`` of the command tree its completion callback."""
    for param in command.params:
        callback = _callback(param)
        if callback is not None and param._custom_shell_complete is None:
            param._custom_shell_complete = _adapt(callback)
    for sub in getattr(command, "commands", {}).values():
        attach(sub)


def _adapt(callback: Callable[[Any, list[str], str], list[str]]) -> Callable[[Any, Any, str], list[Any]]:
    """Click's ``shell_complete`` signature (ctx, param, incomplete) over Typer's ``autocompletion`` one."""
    from typer._click.shell_completion import CompletionItem

    def complete(ctx: Any, param: Any, incomplete: str) -> list[Any]:
        return [CompletionItem(value) for value in callback(ctx, [], incomplete)]

    return complete


def init() -> None:
    """Register Typer's shell classes (its zsh and fish protocol) before the entry point answers."""
    from typer._completion_classes import completion_init

    completion_init()
