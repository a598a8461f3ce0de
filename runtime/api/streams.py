"""Pumping attach/exec sessions over a hijacked connection, and the multiplexed frame format."""

from __future__ import annotations

import struct
import threading
from typing import Any

from runtime.api.server import Hijacked

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"


def frame(stream: int, data: bytes) -> bytes:
    """One stdcopy frame: ``[stream, 0, 0, 0, size32be] + data`` (1 stdout, 2 stderr, 3 daemon error)."""
    return struct.pack(">BxxxL", stream, len(data)) + data


def stream_content_type(tty: bool, api_at_least_142: bool) -> str:
    """moby sends the multiplexed media type from API 1.42 on; raw before, and always for a TTY."""
    return MULTIPLEXED if (api_at_least_142 and not tty) else RAW


def feed_stdin(channel: Hijacked, session: Any) -> threading.Thread:
    """Copy the client's input into the session until it half-closes, then close the process's stdin."""

    def run() -> None:
        try:
            while True:
                data = channel.read()
                if not data:
                    break
                session.write(data)
        except (OSError, ValueError):
            pass  # the process or the client is gone; the output side notices and ends the session
        finally:
            try:
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
