"""A small seccomp filter in the spirit of Docker's default profile, built as classic BPF with ctypes.

It refuses (EPERM) what Docker's profile refuses and dropped capabilities do not already cover: new user
namespaces (unshare/clone with CLONE_NEWUSER), the kernel keyring, userfaultfd, perf events, bpf, module and kexec
loading; ``clone3`` answers ENOSYS so libc falls back to ``clone``, whose flags the filter can inspect. x86_64 only;
elsewhere no filter is installed.
"""
from __future__ import annotations

import ctypes
import errno
import struct

from machines.runtime.linux import syscalls as sc

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
AUDIT_ARCH_X86_64 = 0xC000003E
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_KILL_PROCESS = 0x80000000

BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JSET_K = 0x45
BPF_RET_K = 0x06

# x86_64 numbers.
DENIED = {"add_key": 248, "request_key": 249, "keyctl": 250, "kexec_load": 246, "kexec_file_load": 320,
          "init_module": 175, "finit_module": 313, "delete_module": 176, "bpf": 321, "perf_event_open": 298,
          "userfaultfd": 323, "acct": 163, "swapon": 167, "swapoff": 168, "reboot": 169, "pivot_root": 155,
          "open_by_handle_at": 304, "lookup_dcookie": 212, "quotactl": 179, "nfsservctl": 180}
CLONE, UNSHARE, CLONE3 = 56, 272, 435


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    return code, jt, jf, k


def program() -> list[tuple[int, int, int, int]]:
    """The filter: wrong architecture is killed, denied calls get EPERM, clone/unshare with CLONE_NEWUSER get
    EPERM, clone3 gets ENOSYS, the rest is allowed."""
    eperm = RET_ERRNO | errno.EPERM
    prog = [_op(BPF_LD_W_ABS, 4), _op(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0), _op(BPF_RET_K, RET_KILL_PROCESS),
            _op(BPF_LD_W_ABS, 0)]
    for number in sorted(DENIED.values()):
        prog += [_op(BPF_JEQ_K, number, 0, 1), _op(BPF_RET_K, eperm)]
    prog += [_op(BPF_JEQ_K, CLONE3, 0, 1), _op(BPF_RET_K, RET_ERRNO | errno.ENOSYS)]
    # clone (flags in arg 0 on x86_64) and unshare (flags in arg 0): load the low 32 bits of arg 0.
    prog += [_op(BPF_JEQ_K, CLONE, 1, 0), _op(BPF_JEQ_K, UNSHARE, 0, 3), _op(BPF_LD_W_ABS, 16),
             _op(BPF_JSET_K, sc.CLONE_NEWUSER, 0, 1), _op(BPF_RET_K, eperm)]
    prog.append(_op(BPF_RET_K, RET_ALLOW))
    return prog


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """Applies the filter to the calling process and its future children (needs CAP_SYS_ADMIN, which the
    container init still has at this point)."""
    if sc.MACHINE != "x86_64":
        return
    prog = program()
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    sc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
