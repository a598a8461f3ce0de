"""Pumping attach/exec sessions over a hijacked connection, and the multiplexed frame format."""

from __future__ import annotations

import struct
import threading
from typing import Any

from machines.runtime.api.server import Hijacked

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"


def frame(stream: int, data: bytes) -> bytes:
    """One stdcopy frame: ``[stream, 0, 0, 0, size32be] + data`` (1 stdout, 2 stderr, 3 daemon error)."""
    return struct.pack(">BxxxL", stream, len(data)) + data


def stream_content_type(tty: bool, api_at_least_142: bool) -> str:
    """moby sends the multiplexed media type from API 1.42 on; raw before, and always for a TTY."""
    return MULTIPLEXED if (api_at_least_142 and not tty) else RAW


DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
_CTRL_SPECIAL = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def detach_keys(text: str) -> bytes:
    """``ctrl-p,ctrl-q`` or ``a,ctrl-@``... as bytes, the way moby's term.ToBytes reads them (the daemon's
    default when empty); ValueError for anything else (attach and exec word it differently)."""
    codes = bytearray()
    for key in (text or DEFAULT_DETACH_KEYS).split(","):
        lower = key.lower()
        if len(key) == 1:
            codes.append(ord(key) & 0xFF)
        elif lower.startswith("ctrl-") and len(lower) == 6 and ("a" <= lower[5] <= "z" or lower[5] in _CTRL_SPECIAL):
            codes.append(ord(lower[5]) - ord("a") + 1 if "a" <= lower[5] <= "z" else _CTRL_SPECIAL[lower[5]])
        else:
            raise ValueError(key)
    return bytes(codes)


class EscapeScanner:
    """Finds the detach sequence in what a client types; the bytes of a partial match are held back until the
    next byte shows whether they were the sequence (then they are dropped) or ordinary input (then they go on)."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.matched = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(input to pass on, whether the sequence is complete: everything after it is dropped)."""
        out = bytearray()
        for byte in data:
            if byte != self.keys[self.matched] and self.matched:
                out += self.keys[:self.matched]
                self.matched = 0
            if byte == self.keys[self.matched]:
                self.matched += 1
                if self.matched == len(self.keys):
                    self.matched = 0
                    return bytes(out), True
            else:
                out.append(byte)
        return bytes(out), False


def feed_stdin(channel: Hijacked, session: Any, keys: bytes | None = None) -> threading.Thread:
    """Copy the client's input into the session until it half-closes, then close the process's stdin.

    With a TTY, as in moby's CopyStreams, the detach ``keys`` end the attachment instead (dropped, not passed on),
    and so does the end of the client's input: the process keeps its terminal and runs on."""
    scanner = EscapeScanner(keys) if keys and session.tty else None

    def run() -> None:
        detached = False
        try:
            while not detached:
                data = channel.read()
                if not data:
                    break
                if scanner is not None:
                    data, detached = scanner.feed(data)
                if data:
                    session.write(data)
        except (OSError, ValueError):
            pass  # the process or the client is gone; the output side notices and ends the session
        finally:
            try:
                if session.tty:
                    session.detach()
                else:
                    session.close_stdin()
            except (OSError, ValueError):
                pass

    thread = threading.Thread(target=run, name="api-stdin", daemon=True)
    thread.start()
    return thread


def pump_output(channel: Hijacked, session: Any) -> None:
    """Send the session's output (framed unless TTY) until the process ends, then close the connection."""
    try:
        while True:
            item = session.read()
            if item is None:
                break
            stream, data = item
            if data:
                channel.write(data if session.tty else frame(stream, data))
    except OSError:
        pass  # the client hung up mid-stream
    finally:
        session.close()
        channel.finish()


def write_error(channel: Hijacked, tty: bool, message: str) -> None:
    """An error after the 101: as text on a TTY, else as a stderr frame (what the CLI prints)."""
    data = (message + "\r\n").encode()
    try:
        channel.write(data if tty else frame(2, data))
    except OSError:
        pass
    channel.finish()
