"""Shell completion: the scripts ``machines completion SHELL`` prints, run by real bash, zsh and fish, and the
completion entry point invoked with ``_MACHINES_COMPLETE`` as those scripts invoke it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from machines.store import Store, new_record
from tests.support.cli import MACHINES

NAMES = ("web", "worker", "db")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """``machines`` on PATH with a store holding three machine entries (records only: nothing to reach)."""
    store = Store(tmp_path / "store")
    for name in NAMES:
        store.reserve(new_record(name, "generic", {}, {}))
    return {**os.environ, "PATH": f"{Path(MACHINES).parent}:{os.environ['PATH']}",
            "MACHINES_STORAGE_PATH": str(store.root), "HOME": str(tmp_path)}


def _script(shell: str, env: dict[str, str]) -> str:
    result = subprocess.run([MACHINES, "completion", shell], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _bash(env: dict[str, str], *words: str) -> list[str]:
    """COMPREPLY of the sourced bash script for ``words`` (the last one being completed)."""
    quoted = " ".join(f"'{word}'" for word in words)
    program = (f"source <(machines completion bash)\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
               "_machines_completion machines\nprintf '%s\\n' \"${COMPREPLY[@]}\"")
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completes_machine_names_commands_and_driver_names(env: dict[str, str]) -> None:
    assert "complete -o default -F _machines_completion machines" in _script("bash", env)
    assert sorted(_bash(env, "machines", "ssh", "")) == sorted(NAMES)
    assert sorted(_bash(env, "machines", "rm", "-y", "w")) == ["web", "worker"]
    assert _bash(env, "machines", "port", "watch", "d") == ["db"]
    assert {"ssh", "ssh-config"} <= set(_bash(env, "machines", "ss"))
    assert {"local", "generic", "aws", "azure", "virtualbox"} <= set(_bash(env, "machines", "create", "--driver", ""))
    assert _bash(env, "machines", "env", "--shell", "fi") == ["fish"]


def test_bash_completes_driver_flags_of_create(env: dict[str, str]) -> None:
    flags = _bash(env, "machines", "create", "--generic-")
    assert "--generic-ip-address" in flags and "--generic-ssh-key" in flags
    assert "--local-bridge" in _bash(env, "machines", "create", "--local-b")


def test_the_storage_path_option_is_followed(env: dict[str, str], tmp_path: Path) -> None:
    other = Store(tmp_path / "other")
    other.reserve(new_record("elsewhere", "generic", {}, {}))
    assert _bash(env, "machines", "--storage-path", str(other.root), "ssh", "") == ["elsewhere"]


def test_fish_completes_through_its_script(env: dict[str, str]) -> None:
    program = 'machines completion fish | source; complete -C "machines ssh w"; complete -C "machines create --d"'
    result = subprocess.run(["fish", "--no-config", "-c", program], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert "web" in lines and "worker" in lines and "db" not in lines
    assert "--driver" in lines


def test_zsh_script_loads_and_its_entry_point_answers(env: dict[str, str]) -> None:
    script = _script("zsh", env)
    assert "compdef _machines_completion machines" in script
    loaded = subprocess.run(["zsh", "-f", "-c", f"autoload -U compinit && compinit -u && {script}\n"
                             "print -r -- ${_comps[machines]}"], capture_output=True, text=True, env=env, timeout=60)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "_machines_completion", loaded.stderr
    answer = subprocess.run([MACHINES], capture_output=True, text=True, timeout=60,
                            env={**env, "_MACHINES_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "machines ssh w"})
    assert answer.returncode == 0
    assert answer.stdout.startswith("_arguments '*: :((") and '"web"' in answer.stdout and '"db"' not in answer.stdout


def test_an_unknown_shell_is_refused(env: dict[str, str]) -> None:
    result = subprocess.run([MACHINES, "completion", "tcsh"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and "no completion for 'tcsh'; choose one of bash, zsh, fish" in result.stderr
