"""Dockerfile parsing and the instructions that only change the image config.

Shared by the builder and by ``docker import --change`` / ``docker commit --change``, which accept the same
config instructions (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from machines.runtime import timefmt
from machines.runtime.errors import InvalidParameter

DEFAULT_SHELL = ["/bin/sh", "-c"]
CHANGE_COMMANDS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "HEALTHCHECK", "LABEL", "ONBUILD", "STOPSIGNAL", "USER",
                   "VOLUME", "WORKDIR")  # dockerd's validCommitCommands
KNOWN = ("FROM", "RUN", "COPY", "ADD", "ARG", "SHELL", "MAINTAINER") + CHANGE_COMMANDS
JSON_FORMS = ("RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME")
FLAG_COMMANDS = ("FROM", "RUN", "COPY", "ADD", "HEALTHCHECK")
_FLAG_RE = re.compile(r"^--([a-z-]+)(?:=(\S*))?(?:\s+|$)")
_DIRECTIVE_RE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")


@dataclass
class Instruction:
    """One Dockerfile instruction. ``args`` is the JSON list, or ``[raw text]`` for the shell form."""

    cmd: str
    raw: str
    args: list[str]
    json_form: bool = False
    flags: dict[str, str] = field(default_factory=dict)
    lineno: int = 0

    @property
    def original(self) -> str:
        """The text shown in ``Step N/M : ...``."""
        return f"{self.cmd} {self.raw}" if self.raw else self.cmd


def _split_flags(cmd: str, text: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    if cmd not in FLAG_COMMANDS:
        return flags, text
    while True:
        m = _FLAG_RE.match(text)
        if not m:
            return flags, text
        flags[m.group(1)] = m.group(2) if m.group(2) is not None else "true"
        text = text[m.end():]


def parse_line(line: str, lineno: int = 0) -> Instruction:
    """One logical line (continuations already joined) -> Instruction."""
    m = re.match(r"\s*(\S+)\s*(.*)$", line, re.S)
    if not m:
        raise InvalidParameter(f"dockerfile parse error line {lineno}: empty instruction")
    cmd = m.group(1).upper()
    if cmd not in KNOWN:
        raise InvalidParameter(f"dockerfile parse error line {lineno}: unknown instruction: {m.group(1)}")
    rest = m.group(2).strip()
    flags, body = _split_flags(cmd, rest)
    if cmd in JSON_FORMS and body.startswith("["):
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):  # not JSON (or absurdly nested): the shell form, as moby
            parsed = None
        if isinstance(parsed, list) and all(isinstance(a, str) for a in parsed):
            return Instruction(cmd, rest, parsed, True, flags, lineno)
    return Instruction(cmd, rest, [body], False, flags, lineno)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each instruction: the ``# escape=`` directive, comments and line continuations
    handled, as the Dockerfile parser (and dockerd's ``--change`` parser) reads them."""
    escape = "\\"
    lines = text.splitlines()
    start = 0
    for start, line in enumerate(lines):  # noqa: B007 - after the loop: where the directives end
        m = _DIRECTIVE_RE.match(line.strip())
        if not m:
            break
        if m.group(1).lower() == "escape":
            if m.group(2) not in ("\\", "`"):
                raise InvalidParameter(f"invalid escape token {m.group(2)!r} does not match ` or \\")
            escape = m.group(2)
    else:
        start = len(lines)
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    first = 0
    for n, line in enumerate(lines[start:], start + 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not buf and not stripped):
            continue
        if not buf:
            first = n
        if line.rstrip().endswith(escape):
            buf.append(line.rstrip()[:-1])
            continue
        buf.append(line)
        out.append((first, "".join(buf)))
        buf = []
    if buf and "".join(buf).strip():
        out.append((first, "".join(buf)))
    return out


def parse(text: str) -> list[Instruction]:
    """A Dockerfile -> instructions; honours the ``# escape=`` directive, comments and line continuations."""
    out = [parse_line(line, n) for n, line in logical_lines(text)]
    if not out:
        raise InvalidParameter("the Dockerfile cannot be empty")
    return out


# --- word processing ($VAR, quotes) ----------------------------------------------------------------------------

def _variable(text: str, i: int, env: dict[str, str]) -> tuple[str, int]:
    """Expand the ``$...`` at ``text[i]``; return (value, index after it)."""
    if i + 1 < len(text) and text[i + 1] == "{":
        end = text.find("}", i + 2)
        if end < 0:
            raise InvalidParameter(f"missing '}}' in {text!r}")
        inner = text[i + 2:end]
        for op in (":-", ":+"):
            if op in inner:
                name, word = inner.split(op, 1)
                value = env.get(name, "")
                if op == ":-":
                    return (value if value else expand(word, env)), end + 1
                return (expand(word, env) if value else ""), end + 1
        return env.get(inner, ""), end + 1
    m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1:])
    if not m:
        return "$", i + 1
    return env.get(m.group(0), ""), i + 1 + m.end()


def words(text: str, env: dict[str, str]) -> list[str]:
    """Shell-like words with quotes removed and variables expanded (not inside single quotes)."""
    out: list[str] = []
    cur: list[str] = []
    in_word = False
    i = 0
    while i < len(text):
        c = text[i]
        if c in " \t\r\n":
            if in_word:
                out.append("".join(cur))
                cur, in_word = [], False
            i += 1
            continue
        in_word = True
        if c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise InvalidParameter("unexpected end of statement while looking for matching single-quote")
            cur.append(text[i + 1:end])
            i = end + 1
        elif c == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in '"\\$':
                    cur.append(text[i + 1])
                    i += 2
                elif text[i] == "$":
                    value, i = _variable(text, i, env)
                    cur.append(value)
                else:
                    cur.append(text[i])
                    i += 1
            if i >= len(text):
                raise InvalidParameter("unexpected end of statement while looking for matching double-quote")
            i += 1
        elif c == "\\" and i + 1 < len(text):
            cur.append(text[i + 1])
            i += 2
        elif c == "$":
            value, i = _variable(text, i, env)
            cur.append(value)
        else:
            cur.append(c)
            i += 1
    if in_word:
        out.append("".join(cur))
    return out


def expand(text: str, env: dict[str, str]) -> str:
    """Variables expanded and quotes removed, words joined by one space."""
    return " ".join(words(text, env))


def key_values(ins: Instruction, env: dict[str, str]) -> list[tuple[str, str]]:
    """ENV/LABEL/ARG pairs: ``k=v k2="v 2"``, or the legacy ``ENV key the value``."""
    text = ins.args[0]
    parts = words(text, env)
    if not parts:
        raise InvalidParameter(f"{ins.cmd} requires at least one argument")
    if "=" not in parts[0]:
        if ins.cmd == "ENV" or ins.cmd == "LABEL":
            if len(parts) < 2:
                raise InvalidParameter(f"{ins.cmd} must have two arguments")
            return [(parts[0], " ".join(parts[1:]))]
        return [(p, "") for p in parts]
    pairs = []
    for p in parts:
        key, eq, value = p.partition("=")
        if not eq or not key:
            raise InvalidParameter(f"{ins.cmd} names can not be blank; syntax is key=value: {p!r}")
        pairs.append((key, value))
    return pairs


# --- config-only instructions -----------------------------------------------------------------------------------

def env_dict(config: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in config.get("Env") or []:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def _set_env(config: dict, key: str, value: str) -> None:
    env = [e for e in config.get("Env") or [] if e.partition("=")[0] != key]
    env.append(f"{key}={value}")
    config["Env"] = env


def command_args(ins: Instruction, config: dict) -> list[str]:
    """JSON form as is; shell form run through the image's SHELL."""
    if ins.json_form:
        return list(ins.args)
    return list(config.get("Shell") or DEFAULT_SHELL) + [ins.args[0]]


def duration_ns(text: str) -> int:
    """Go duration (``30s``, ``1m30s``) -> nanoseconds; negative ones are refused."""
    try:
        seconds = timefmt.parse_go_duration(text) if text else 0.0
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise InvalidParameter(f"time: invalid duration {text!r}")
    return int(round(seconds * 1e9))


def _healthcheck(ins: Instruction) -> dict:
    body = ins.args[0].strip()
    if body.upper() == "NONE":
        return {"Test": ["NONE"]}
    inner = parse_line(body, ins.lineno) if body else None
    if inner is None or inner.cmd != "CMD":
        raise InvalidParameter("Unknown type in HEALTHCHECK (try CMD)")
    test = ["CMD"] + inner.args if inner.json_form else ["CMD-SHELL", inner.args[0]]
    check: dict = {"Test": test}
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"),
                      ("start-interval", "StartInterval")):
        if flag in ins.flags:
            check[key] = duration_ns(ins.flags[flag])
    if "retries" in ins.flags:
        check["Retries"] = int(ins.flags["retries"])
    return check


def apply_config(config: dict, ins: Instruction, env: dict[str, str]) -> bool:
    """Apply a config-only instruction to a container config dict; False if ``ins`` is not one."""
    cmd = ins.cmd
    if cmd == "CMD":
        config["Cmd"] = command_args(ins, config)
    elif cmd == "ENTRYPOINT":
        config["Entrypoint"] = command_args(ins, config)
    elif cmd == "ENV":
        for key, value in key_values(ins, env):
            _set_env(config, key, value)
            env[key] = value
    elif cmd == "LABEL":
        labels = dict(config.get("Labels") or {})
        labels.update(key_values(ins, env))
        config["Labels"] = labels
    elif cmd == "EXPOSE":
        ports = dict(config.get("ExposedPorts") or {})
        for port in words(ins.args[0], env):
            ports[port if "/" in port else port + "/tcp"] = {}
        config["ExposedPorts"] = ports
    elif cmd == "VOLUME":
        volumes = dict(config.get("Volumes") or {})
        for path in (ins.args if ins.json_form else words(ins.args[0], env)):
            volumes[path] = {}
        config["Volumes"] = volumes
    elif cmd == "USER":
        config["User"] = expand(ins.args[0], env)
    elif cmd == "WORKDIR":
        path = expand(ins.args[0], env)
        config["WorkingDir"] = posixpath.normpath(posixpath.join(config.get("WorkingDir") or "/", path))
    elif cmd == "STOPSIGNAL":
        config["StopSignal"] = expand(ins.args[0], env)
    elif cmd == "ONBUILD":
        config["OnBuild"] = list(config.get("OnBuild") or []) + [ins.raw]
    elif cmd == "SHELL":
        if not ins.json_form:
            raise InvalidParameter("SHELL requires the arguments to be in JSON form")
        config["Shell"] = list(ins.args)
    elif cmd == "HEALTHCHECK":
        config["Healthcheck"] = _healthcheck(ins)
    else:
        return False
    return True


def apply_changes(config: dict, changes: Sequence[str]) -> dict:
    """``--change`` lines (``CMD ["sh"]``, ``ENV A=b``) applied to a copy of a container config, as dockerd's
    ``BuildFromConfig``: the changes read as one Dockerfile (a value may hold several lines), only the commit
    instructions allowed, and ENTRYPOINT clearing Cmd unless a CMD change came before it."""
    out = dict(config)
    env = env_dict(out)
    cmd_set = False
    for n, line in logical_lines("\n".join(changes)):
        word = line.split(None, 1)[0]
        if word.upper() not in CHANGE_COMMANDS:
            raise InvalidParameter(f"{word.lower()} is not a valid change command")
        ins = parse_line(line, n)
        cmd_set = cmd_set or ins.cmd == "CMD"
        if ins.cmd == "ENTRYPOINT" and not cmd_set:
            out["Cmd"] = None
        apply_config(out, ins, env)
    return out


def stage_name(ins: Instruction, env: dict[str, str]) -> tuple[str, str | None]:
    """``FROM image [AS name]`` -> (image, name)."""
    parts = words(ins.args[0], env)
    if len(parts) == 3 and parts[1].lower() == "as":
        return parts[0], parts[2].lower()
    if len(parts) != 1:
        raise InvalidParameter("FROM requires either one or three arguments")
    return parts[0], None
