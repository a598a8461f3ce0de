"""The part of a container's ``/etc/hosts`` that networking owns.

The engine writes the file first (localhost lines, ExtraHosts); we append a block after a marker line with the
container's own address and its peers on user-defined networks, which is how containers find each other by name
without an embedded DNS server. The file is bind-mounted into the container, so it is rewritten in place
(truncate and write): replacing it with a rename would leave the container looking at the old inode.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger("runtime.network")

MARKER = "# --- container networks (managed by the runtime) ---"


def render_block(entries: Iterable[tuple[str, Iterable[str]]]) -> str:
    """``entries`` are (address, names); a name repeated for the same address is left out. No entries, no block."""
    lines = [MARKER]
    seen: set[tuple[str, str]] = set()
    for address, names in entries:
        fresh = [name for name in dict.fromkeys(names) if name and (address, name) not in seen]
        seen.update((address, name) for name in fresh)
        if fresh:
            lines.append(f"{address}\t{' '.join(fresh)}")
    return "\n".join(lines) + "\n" if len(lines) > 1 else ""


def write_block(path: str, block: str) -> None:
    """Replaces the managed block of ``path`` in place; a file that is gone (container removed) is skipped."""
    try:
        with open(path, "r+") as hosts:
            text = hosts.read()
            head = text.split(MARKER, 1)[0]
            if head and not head.endswith("\n"):
                head += "\n"
            updated = head + block
            if updated != text:
                hosts.seek(0)
                hosts.truncate()
                hosts.write(updated)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot update %s: %s", path, exc)
