"""An SSH server of the tests' own whose SFTP side describes whatever tree a test wants, hostile names included.

A real filesystem cannot hold a name with ``/`` in it, so the attacks on ``machines scp -r`` that a hostile machine
could mount are served by this paramiko server over a real loopback SSH connection. It accepts one login key,
answers every ``exec`` with exit status 0 (enough for ``machines create -d generic --no-provision``) and serves
``Node`` trees over SFTP exactly as given.
"""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import paramiko


@dataclasses.dataclass
class Node:
    """One entry of the served tree: a folder (``children``), a file (``data``) or a symlink (``link``)."""

    mode: int
    data: bytes = b""
    link: str | None = None
    children: dict[str, Node] | Callable[[], dict[str, Node]] | None = None

    def attributes(self, name: str) -> paramiko.SFTPAttributes:
        attributes = paramiko.SFTPAttributes()
        attributes.filename = name
        attributes.st_mode = self.mode
        attributes.st_size = len(self.data)
        attributes.st_uid = attributes.st_gid = 0
        attributes.st_atime = attributes.st_mtime = 0
        return attributes

    def listing(self) -> dict[str, Node]:
        children = self.children() if callable(self.children) else self.children
        return dict(children or {})


def folder(children: dict[str, Node] | Callable[[], dict[str, Node]], mode: int = 0o755) -> Node:
    return Node(stat.S_IFDIR | mode, children=children)


def file(data: bytes, mode: int = 0o644) -> Node:
    return Node(stat.S_IFREG | mode, data=data)


def symlink(target: str) -> Node:
    return Node(stat.S_IFLNK | 0o777, link=target)


class _Handle(paramiko.SFTPHandle):
    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node
        self.readfile = io.BytesIO(node.data)

    def stat(self) -> paramiko.SFTPAttributes:
        return self.node.attributes("")


class HostileSFTP(paramiko.SFTPServerInterface):
    """Serves ``root``: a path is looked up component by component, split on ``/`` as the client sent it."""

    def __init__(self, server: paramiko.ServerInterface, root: Node) -> None:
        super().__init__(server)
        self.root = root

    def _find(self, path: str, follow: bool) -> Node | int:
        node = self.root
        for part in [part for part in path.split("/") if part and part != "."]:
            children = node.listing()
            if part not in children:
                return paramiko.SFTP_NO_SUCH_FILE
            node = children[part]
        if follow and node.link is not None:
            return paramiko.SFTP_NO_SUCH_FILE  # the tests' trees never need a followed link
        return node

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        found = self._find(path, follow=True)
        return found if isinstance(found, int) else found.attributes(os.path.basename(path))

    def lstat(self, path: str) -> paramiko.SFTPAttributes | int:
        found = self._find(path, follow=False)
        return found if isinstance(found, int) else found.attributes(os.path.basename(path))

    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        found = self._find(path, follow=True)
        if isinstance(found, int):
            return found
        return [child.attributes(name) for name, child in found.listing().items()]

    def readlink(self, path: str) -> str | int:
        found = self._find(path, follow=False)
        return found if isinstance(found, int) else found.link or paramiko.SFTP_NO_SUCH_FILE

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> paramiko.SFTPHandle | int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            return paramiko.SFTP_PERMISSION_DENIED
        found = self._find(path, follow=True)
        return found if isinstance(found, int) else _Handle(found)

    def canonicalize(self, path: str) -> str:
        return path


class _Login(paramiko.ServerInterface):
    def __init__(self, allowed: paramiko.PKey) -> None:
        self.allowed = allowed

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL if key == self.allowed else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        def finish() -> None:
            channel.send_exit_status(0)
            channel.close()

        threading.Thread(target=finish, daemon=True).start()
        return True


class HostileServer:
    """Listens on 127.0.0.1 (a free port); ``root`` is the tree served, replaceable between copies."""

    def __init__(self, login_key: Path, root: Node) -> None:
        self.root = root
        self.host_key = paramiko.ECDSAKey.generate()
        self.allowed = paramiko.PKey.from_path(str(login_key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def host_key_line(self) -> str:
        return f"{self.host_key.get_name()} {self.host_key.get_base64()}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(client)
            transport.add_server_key(self.host_key)
            transport.set_subsystem_handler("sftp", paramiko.SFTPServer, HostileSFTP, self.root)
            self.transports.append(transport)
            try:
                transport.start_server(server=_Login(self.allowed))
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()

    def close(self) -> None:
        self.listener.close()
        for transport in self.transports:
            transport.close()
        self.thread.join(5)
