"""inotify through ctypes (the standard library has no binding): a descriptor that becomes readable when a file in
one folder is written, created, moved or deleted, so a reader can sleep in ``poll`` instead of looking again and
again (``docker logs -f``, as moby's filenotify does with fsnotify)."""
from __future__ import annotations

import ctypes
import os

from machines.runtime.linux.syscalls import _check, _libc

IN_MODIFY = 0x002
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_ONLYDIR = 0x01000000
_CHANGES = IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE

_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


class FolderWatch:
    """An inotify descriptor (``fd``, non-blocking) readable once anything in ``folder`` changed since the last
    ``clear``. OSError when the host refuses one (``max_user_instances`` or ``max_user_watches`` reached)."""

    def __init__(self, folder: str) -> None:
        self.fd = _check(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")
        try:
            _check(_libc.inotify_add_watch(self.fd, os.fsencode(folder), _CHANGES | IN_ONLYDIR),
                   f"inotify_add_watch {folder}")
        except OSError:
            os.close(self.fd)
            raise

    def clear(self) -> None:
        """Forget the events seen so far: the caller looks at the folder itself afterwards."""
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)
