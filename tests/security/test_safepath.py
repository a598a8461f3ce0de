"""Issue 11 item 1, the mechanism: ``runtime.linux.safepath.Root`` keeps every lookup inside its tree, with the
kernel's openat2(RESOLVE_IN_ROOT) and with the component walk used where the kernel lacks it (both run here)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from machines.runtime.linux import safepath


@pytest.fixture(params=["openat2", "walk"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    safepath.use_openat2(False if request.param == "walk" else None)
    yield request.param
    safepath.use_openat2(None)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``root`` holds links aimed at ``outside`` (a sibling with a secret) in every way a hostile tree can."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("host secret")
    root = tmp_path / "root"
    (root / "outside").mkdir(parents=True)
    (root / "outside" / "secret").write_text("inside copy")
    (root / "a").mkdir()
    (root / "a" / "abs").symlink_to("/outside")
    (root / "a" / "host").symlink_to(tmp_path / "outside")  # the host's own path: means nothing inside
    (root / "a" / "rel").symlink_to("../../../../../outside")
    (root / "a" / "loop").symlink_to("loop")
    (root / "a" / "file").write_text("plain")
    return root


def _read(root: safepath.Root, path: str) -> str:
    fd = root.open(path)
    try:
        return os.read(fd, 100).decode()
    finally:
        os.close(fd)


@pytest.mark.parametrize("path", ["a/abs/secret", "a/rel/secret", "/a/../../../outside/secret",
                                  "../../outside/secret"])
def test_links_and_dotdot_resolve_inside_the_root(mode: str, tree: Path, path: str) -> None:
    with safepath.Root(str(tree)) as root:
        assert _read(root, path) == "inside copy"
        assert safepath.openat2_in_use() == (mode == "openat2")
        resolved = root.resolve(path)
    assert resolved == "/outside/secret"


def test_link_loops_host_paths_and_files_as_folders_fail(mode: str, tree: Path) -> None:
    with safepath.Root(str(tree)) as root:
        with pytest.raises(FileNotFoundError):
            root.open("a/host/secret")
        with pytest.raises(OSError) as loop:
            root.open("a/loop/x")
        assert loop.value.errno == errno.ELOOP
        with pytest.raises(NotADirectoryError):
            root.open("a/file/x")


def test_makedirs_through_a_link_stays_inside(mode: str, tree: Path) -> None:
    with safepath.Root(str(tree)) as root:
        os.close(root.makedirs("a/abs/made/deeper"))
    assert (tree / "outside" / "made" / "deeper").is_dir()
    assert not (tree.parent / "outside" / "made").exists()


def test_replace_turns_a_link_into_a_folder(mode: str, tree: Path) -> None:
    with safepath.Root(str(tree)) as root:
        os.close(root.makedirs("a/abs/new", replace=True))
    assert (tree / "a" / "abs").is_dir() and not (tree / "a" / "abs").is_symlink()
    assert sorted(os.listdir(tree.parent / "outside")) == ["secret"]


def test_a_root_without_links_refuses_them(mode: str, tree: Path) -> None:
    with safepath.Root(str(tree), follow_links=False) as root:
        with pytest.raises(OSError) as refused:
            root.open("a/abs/secret")
        assert refused.value.errno == errno.ELOOP
        assert _read(root, "a/file") == "plain"


def test_open_without_follow_gives_the_link_itself(mode: str, tree: Path) -> None:
    with safepath.Root(str(tree)) as root:
        assert root.readlink("a/abs") == "/outside"
        assert root.lstat("a/abs").st_mode & 0o170000 == 0o120000
        with pytest.raises(OSError) as refused:
            root.open("a/abs", os.O_RDONLY, follow=False)
        assert refused.value.errno in (errno.ELOOP, errno.ENOTDIR)


def test_magic_links_are_refused_by_openat2(tmp_path: Path) -> None:
    """/proc/self/root would name the daemon's own root: openat2 refuses magic links outright."""
    safepath.use_openat2(None)
    with safepath.Root("/") as root:
        with pytest.raises(OSError) as refused:
            root.open("proc/self/root/etc/hostname")
        assert refused.value.errno == errno.ELOOP and safepath.openat2_in_use()


def test_copy_tree_keeps_links_as_links_and_owners(mode: str, tree: Path, tmp_path: Path) -> None:
    os.chown(tree / "a" / "file", 4321, 8765)
    dest = tmp_path / "copy"
    dest.mkdir()
    src_fd = os.open(str(tree / "a"), os.O_RDONLY | os.O_DIRECTORY)
    dst_fd = os.open(str(dest), os.O_RDONLY | os.O_DIRECTORY)
    try:
        safepath.copy_tree(src_fd, dst_fd)
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    assert os.readlink(dest / "host") == str(tmp_path / "outside") and (dest / "rel").is_symlink()
    st = os.stat(dest / "file")
    assert (st.st_uid, st.st_gid) == (4321, 8765) and (dest / "file").read_text() == "plain"


def test_makedirs_through_a_dangling_link_creates_its_target_inside(mode: str, tree: Path) -> None:
    (tree / "a" / "dangling").symlink_to(tree.parent / "elsewhere")  # a host path, absent inside the tree
    with safepath.Root(str(tree)) as root:
        os.close(root.makedirs("a/dangling/x"))
    assert (tree / str(tree.parent / "elsewhere").lstrip("/") / "x").is_dir()
    assert not (tree.parent / "elsewhere").exists()
