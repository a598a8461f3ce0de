"""Where ``machines scan`` reads an image from: an archive file, a registry, or a machine.

A file is a ``docker save`` archive (``manifest.json``), an OCI image layout tar (``index.json``) or a plain root
filesystem tar (as ``docker export`` or debootstrap + tar make). Any other name is an image reference pulled from
its registry with the runtime's client (digests checked, credentials from ``~/.docker/config.json``). With
``--machine`` the image is exported from that machine's runtime (``GET /images/{name}/get`` on its socket, over
SSH) into a temporary file first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from machines.errors import ScanError
from machines.runtime.images import registry
from machines.runtime.images.media import INDEX_TYPES, host_platform
from machines.trust import sigstore

EXPORT_SCRIPT = """
import http.client, shutil, socket, sys, urllib.parse
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sys.argv[1])
conn = Unix("localhost")
conn.request("GET", "/images/" + urllib.parse.quote(sys.argv[2], safe="") + "/get")
answer = conn.getresponse()
if answer.status != 200:
    sys.stderr.write(answer.read().decode(errors="replace"))
    sys.exit(1)
shutil.copyfileobj(answer, sys.stdout.buffer)
"""


@contextlib.contextmanager
def image_layers(image: str, machine: object | None = None) -> Iterator[Iterator[IO[bytes]]]:
    """The image's layer tars, lowest first, as streams (valid inside the ``with``)."""
    with contextlib.ExitStack() as stack:
        if machine is not None:
            path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="machines-scan-"))) / "image.tar"
            _export_from_machine(machine, image, path)
            yield _archive_layers(stack, path)
        elif Path(image).is_file():
            yield _archive_layers(stack, Path(image))
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="machines-scan-")))
            yield _registry_layers(image, folder)


def _archive_layers(stack: contextlib.ExitStack, path: Path) -> Iterator[IO[bytes]]:
    try:
        outer = stack.enter_context(tarfile.open(path, "r:*"))
        names = set(outer.getnames())
    except (tarfile.TarError, OSError) as exc:
        raise ScanError(f"{path}: not an image archive or root filesystem tar: {exc}") from None

    def member(name: str) -> IO[bytes]:
        handle = outer.extractfile(name.lstrip("./")) if name.lstrip("./") in names else None
        if handle is None:
            raise ScanError(f"{path}: the archive has no {name}")
        return handle

    if "manifest.json" in names:
        manifest = json.load(member("manifest.json"))
        layer_names = manifest[0]["Layers"] if manifest else []
    elif "index.json" in names:
        index = json.load(member("index.json"))
        digest = index["manifests"][0]["digest"]
        doc = json.load(member("blobs/" + digest.replace(":", "/")))
        if "manifests" in doc:
            doc = json.load(member("blobs/" + doc["manifests"][0]["digest"].replace(":", "/")))
        layer_names = ["blobs/" + layer["digest"].replace(":", "/") for layer in doc["layers"]]
    else:
        return iter([stack.enter_context(open(path, "rb"))])  # a root filesystem tar
    return (member(name) for name in layer_names)


def _registry_layers(image: str, folder: Path) -> Iterator[IO[bytes]]:
    ref = sigstore.parse_image(image)
    with sigstore.registry_errors():
        session = sigstore.session(ref, "pull")
        doc, _, media, _ = session.get_json_blob(f"/v2/{ref.path}/manifests/{ref.digest or ref.tag}",
                                                 registry.MANIFEST_ACCEPT, ref.digest)
        if media in INDEX_TYPES or "manifests" in doc:
            entry = registry._choose_platform(doc, host_platform())
            doc, _, _, _ = session.get_json_blob(f"/v2/{ref.path}/manifests/{entry['digest']}",
                                                 registry.MANIFEST_ACCEPT, entry["digest"])
        paths = [_fetch_blob(session, layer["digest"], folder) for layer in doc.get("layers") or []]
    return (open(path, "rb") for path in paths)


def _fetch_blob(session: registry.Session, digest: str, folder: Path) -> Path:
    target = folder / digest.replace(":", "-")
    sha = hashlib.sha256()
    resp = session.request("GET", f"/v2/{session.ref.path}/blobs/{digest}")
    try:
        if resp.status != 200:
            raise ScanError(f"fetching layer {digest}: HTTP {resp.status}")
        with open(target, "wb") as out:
            while chunk := resp.read(1 << 20):
                sha.update(chunk)
                out.write(chunk)
    finally:
        resp.close()
    if "sha256:" + sha.hexdigest() != digest:
        raise ScanError(f"filesystem layer verification failed for digest {digest}")
    return target


def _export_from_machine(machine: object, image: str, target: Path) -> None:
    """``docker save`` on the machine's own socket, streamed back over SSH into ``target``."""
    runtime = machine.record.get("runtime") or {}  # type: ignore[attr-defined]
    python, socket_path = runtime.get("python") or "python3", runtime.get("socket") or "/var/run/docker.sock"
    connection = machine.ssh()  # type: ignore[attr-defined]
    try:
        command = connection.wrap_sudo(" ".join(shlex.quote(part) for part in
                                                (python, "-c", EXPORT_SCRIPT, socket_path, image)))
        channel = connection.transport.open_session()
        channel.exec_command(command)
        channel.shutdown_write()
        with open(target, "wb") as out:
            while chunk := channel.recv(1 << 20):
                out.write(chunk)
        errors = b""
        while channel.recv_stderr_ready() or not channel.exit_status_ready():
            part = channel.recv_stderr(1 << 16)
            if not part:
                break
            errors += part
        if channel.recv_exit_status() != 0:
            message = errors.decode(errors="replace").strip()
            try:
                message = json.loads(message).get("message", message)
            except (ValueError, AttributeError):
                pass
            raise ScanError(f"{machine.name}: {message or 'exporting ' + image + ' failed'}")  # type: ignore[attr-defined]
    finally:
        connection.close()
