"""Issue 11 item 1, builder boundary: a hostile build context or image layer never makes ``docker build`` read or
write outside the context, the image or the layer being made (the two attacks reproduced in issue 11)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from machines.runtime.images.builder import ImageView
from tests.support.daemon import Daemon


def _build(daemon: Daemon, context: Path, tag: str) -> tuple[int, str]:
    result = daemon.docker("build", "-t", tag, str(context), timeout=180)
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


def test_copy_of_two_sources_does_not_write_through_a_link_into_the_host(daemon: Daemon, image: str,
                                                                         tmp_path: Path) -> None:
    """``a/x -> <host folder>`` then ``b/x/`` a folder, ``COPY a b /dest/``: the second source must replace the
    link copied by the first (as Docker's tar extraction does), not write through it as root."""
    host = tmp_path / "host-folder"
    host.mkdir()
    context = tmp_path / "context"
    (context / "a").mkdir(parents=True)
    (context / "a" / "x").symlink_to(host)
    (context / "b" / "x").mkdir(parents=True)
    (context / "b" / "x" / "planted").write_text("written by the build\n")
    (context / "Dockerfile").write_text(f"FROM {image}\nCOPY a b /dest/\n")
    tag = f"sec-ctx-{uuid.uuid4().hex[:8]}:1"
    code, output = _build(daemon, context, tag)
    try:
        assert os.listdir(host) == [], output
        assert code == 0, output
        shown = daemon.out("run", "--rm", tag, "sh", "-c", "test -d /dest/x && ! test -L /dest/x && cat /dest/x/planted")
        assert shown == "written by the build\n"
    finally:
        daemon.docker("rmi", "-f", tag)


def test_copy_from_cannot_read_the_host_through_a_lower_layer_link(daemon: Daemon, image: str,
                                                                    tmp_path: Path) -> None:
    """Layer 1 has ``/d -> /`` (a link to the root), layer 2 (a COPY) has a folder ``/d``. In the merged image
    ``/d`` is that folder and nothing else, so ``COPY --from`` of ``/d/<host path>`` finds nothing, whereas a
    lookup that falls through to layer 1 on the host would follow the link into the host's root."""
    secret = tmp_path / "host-secret.txt"
    token = uuid.uuid4().hex
    secret.write_text(token)
    context = tmp_path / "context"
    (context / "d").mkdir(parents=True)
    (context / "d" / "marker").write_text("upper\n")
    (context / "Dockerfile").write_text(
        f"FROM {image} AS src\n"
        "RUN ln -s / /d\n"
        "COPY d /d/\n"
        f"FROM {image}\n"
        "COPY --from=src /d/marker /marker\n"
        f"COPY --from=src /d{secret} /stolen\n")
    tag = f"sec-from-{uuid.uuid4().hex[:8]}:1"
    code, output = _build(daemon, context, tag)
    try:
        assert code != 0 and "file not found" in output, output
        assert token not in output
        assert daemon.docker("image", "inspect", tag).returncode != 0
    finally:
        daemon.docker("rmi", "-f", tag)


def test_context_links_to_host_files_are_resolved_inside_the_context(daemon: Daemon, image: str,
                                                                     tmp_path: Path) -> None:
    """A top-level source that is a link to a host file is followed inside the context (moby's
    FollowSymlinkInScope): ``/etc/hostname`` of the context, which does not exist, never the host's."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "leak").symlink_to("/etc/hostname")
    (context / "Dockerfile").write_text(f"FROM {image}\nCOPY leak /leak\n")
    tag = f"sec-leak-{uuid.uuid4().hex[:8]}:1"
    code, output = _build(daemon, context, tag)
    daemon.docker("rmi", "-f", tag)
    assert code != 0 and "file not found in build context" in output, output


def test_image_view_follows_overlay_rules(tmp_path: Path) -> None:
    """The layer view used by COPY --from: a non-folder in an upper layer hides everything below it, a whiteout
    hides the name, an opaque folder hides the same folder below, and links in a lower layer under an upper
    folder are never followed on the host."""
    lower, middle, upper = (tmp_path / n for n in ("lower", "middle", "upper"))
    for layer in (lower, middle, upper):
        layer.mkdir()
    (lower / "d").symlink_to("/")                     # d -> / in the lowest layer
    (upper / "d").mkdir()                             # ... hidden by a folder above
    (upper / "d" / "marker").write_text("upper")
    (lower / "f").mkdir()
    (lower / "f" / "under").write_text("hidden")
    (middle / "f").write_text("file hides folder")
    (lower / "gone").write_text("x")
    os.mknod(middle / "gone", 0o600 | 0o020000, os.makedev(0, 0))  # an overlay whiteout
    (lower / "o").mkdir()
    (lower / "o" / "old").write_text("x")
    (upper / "o").mkdir()
    os.setxattr(upper / "o", "trusted.overlay.opaque", b"y")
    (upper / "o" / "new").write_text("y")
    view = ImageView([str(lower), str(middle), str(upper)])
    assert view.listdir("d") == ["marker"]
    assert view.lstat("d/etc/passwd") is None and view.lstat("d/etc") is None
    assert view.lstat("f").open().read() == b"file hides folder" and view.lstat("f/under") is None
    assert view.lstat("gone") is None and "gone" not in view.listdir("")
    assert view.listdir("o") == ["new"] and view.lstat("o/old") is None
    (upper / "link").symlink_to("../../../../etc")
    assert view.resolve("link/passwd") == "etc/passwd" and view.lstat(view.resolve("link/passwd")) is None
    assert json.dumps(view.listdir("")) == json.dumps(sorted(["d", "f", "link", "o"]))


def test_copy_destination_links_resolve_inside_the_image(daemon: Daemon, image: str, tmp_path: Path) -> None:
    """``/app -> /srv`` and ``/hostdir -> <a host folder>`` in the image: ``COPY f /app/`` lands in the image's
    ``/srv`` (as Docker), and ``COPY f /hostdir/`` in the image's own copy of that path, never on the host."""
    host = tmp_path / "host-folder"
    host.mkdir()
    context = tmp_path / "context"
    context.mkdir()
    (context / "f").write_text("copied\n")
    (context / "Dockerfile").write_text(
        f"FROM {image}\nRUN mkdir /srv && ln -s /srv /app && ln -s {host} /hostdir\n"
        "COPY f /app/\nCOPY f /hostdir/\n")
    tag = f"sec-dest-{uuid.uuid4().hex[:8]}:1"
    code, output = _build(daemon, context, tag)
    try:
        assert code == 0, output
        assert os.listdir(host) == []
        shown = daemon.out("run", "--rm", tag, "sh", "-c", f"test -L /app && cat /srv/f && cat {host}/f")
        assert shown == "copied\ncopied\n"
    finally:
        daemon.docker("rmi", "-f", tag)
