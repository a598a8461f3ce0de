"""Following a json-file log (``docker logs -f``) as the shim writes it: lines written after the follower started,
across a rotation, and the end when the container stops; with inotify, and by looking again where the host refuses
an inotify descriptor."""

from __future__ import annotations

import json
import os
import queue
import threading
from pathlib import Path

import pytest

from machines.runtime.engine import logs
from machines.runtime.engine.events import EventBus
from machines.runtime.linux import inotify


def _append(path: Path, text: str) -> None:
    with open(path, "ab") as f:
        f.write((json.dumps({"log": text, "stream": "stdout", "time": "2026-01-01T00:00:00.000000000Z"}) + "\n")
                .encode())


@pytest.mark.parametrize("watch", ["inotify", "refused"])
def test_a_follower_gets_new_lines_across_a_rotation_and_ends_when_the_container_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, watch: str) -> None:
    if watch == "refused":
        def refuse(folder: str) -> None:
            raise OSError(24, "inotify_init1: Too many open files")
        monkeypatch.setattr(inotify, "FolderWatch", refuse)
    path = tmp_path / "c1-json.log"
    _append(path, "old\n")
    alive = [True]
    listeners: list = []

    def on_stop(wake):
        listeners.append(wake)
        return lambda: listeners.remove(wake)

    got: queue.Queue = queue.Queue()

    def follow() -> None:
        for _, data in logs.read_logs(str(path), follow=True, stdout=True, stderr=True, tail="all",
                                      running=lambda: alive[0], on_stop=on_stop):
            got.put(data)
        got.put(None)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert got.get(timeout=20) == b"old\n"
    _append(path, "new\n")
    assert got.get(timeout=20) == b"new\n"
    os.rename(path, f"{path}.1")  # the shim's rotation: the current file becomes .1, a new one starts
    _append(path, "rotated\n")
    assert got.get(timeout=20) == b"rotated\n"
    _append(path, "last\n")
    alive[0] = False
    for wake in list(listeners):
        wake()
    assert got.get(timeout=20) == b"last\n"  # drained before it ends
    assert got.get(timeout=20) is None
    follower.join(20)
    assert not follower.is_alive() and listeners == []


def test_a_bus_listener_hears_events_until_it_stops(tmp_path: Path) -> None:
    bus = EventBus()
    heard: list[str] = []
    stop = bus.listen(lambda event: heard.append(event["Action"]))
    bus.emit("container", "die", "c1", {})
    stop()
    bus.emit("container", "destroy", "c1", {})
    assert heard == ["die"]
