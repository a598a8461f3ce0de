"""Shell syntaxes for ``machines env``: set or unset variables in bash/zsh/sh, fish, tcsh, PowerShell and cmd.

Values are quoted for each shell, so a store path with spaces or quotes survives ``eval``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping

from machines.errors import UsageError

SHELLS = ("bash", "zsh", "sh", "fish", "tcsh", "powershell", "cmd")


def _fish_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _powershell_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_SET: dict[str, Callable[[str, str], str]] = {
    "posix": lambda key, value: f"export {key}={shlex.quote(value)}",
    "fish": lambda key, value: f"set -gx {key} {_fish_quote(value)};",
    "tcsh": lambda key, value: f"setenv {key} {shlex.quote(value)};",
    "powershell": lambda key, value: f"$Env:{key} = {_powershell_quote(value)}",
    "cmd": lambda key, value: f"SET {key}={value}",
}
_UNSET: dict[str, Callable[[str], str]] = {
    "posix": lambda key: f"unset {key}",
    "fish": lambda key: f"set -e {key};",
    "tcsh": lambda key: f"unsetenv {key};",
    "powershell": lambda key: f"Remove-Item Env:\\{key} -ErrorAction SilentlyContinue",
    "cmd": lambda key: f"SET {key}=",
}
_HINT: dict[str, Callable[[str], str]] = {
    "posix": lambda command: f'# Run this command to configure your shell:\n# eval "$({command})"',
    "fish": lambda command: f"# Run this command to configure your shell:\n# eval ({command})",
    "tcsh": lambda command: f"# Run this command to configure your shell:\n# eval `{command}`",
    "powershell": lambda command: f"# Run this command to configure your shell:\n# & {command} | Invoke-Expression",
    "cmd": lambda command: f"REM Run this command to configure your shell:\nREM @FOR /f \"tokens=*\" %i IN ('{command}') DO @%i",
}


def detect_shell() -> str:
    """The user's shell from ``$SHELL`` when it is one we speak, else bash (the syntax zsh and sh share)."""
    name = os.path.basename(os.environ.get("SHELL", ""))
    return name if name in SHELLS else "bash"


def _family(shell: str) -> str:
    shell = shell.lower()
    if shell not in SHELLS:
        raise UsageError(f"unknown shell {shell!r}; choose one of {', '.join(SHELLS)}")
    return "posix" if shell in ("bash", "zsh", "sh") else shell


def render(variables: dict[str, str | None], shell: str, command: str) -> str:
    """Lines that set each variable (``None`` unsets it), then a comment telling how to apply them."""
    family = _family(shell)
    lines = [
        _UNSET[family](key) if value is None else _SET[family](key, value) for key, value in variables.items()
    ]
    lines.append(_HINT[family](command))
    return "\n".join(lines) + "\n"


def no_proxy_value(address: str, environ: Mapping[str, str] | None = None) -> str:
    """``NO_PROXY`` with ``address`` appended once (idempotent: running ``env --no-proxy`` twice adds it once)."""
    values = os.environ if environ is None else environ
    current = values.get("NO_PROXY") or values.get("no_proxy") or ""
    entries = [entry.strip() for entry in current.split(",") if entry.strip()]
    if address not in entries:
        entries.append(address)
    return ",".join(entries)
