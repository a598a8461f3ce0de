"""Packaging (issue 17, item 7): the four folders at the top of the repository install as ``machines``,
``machines.drivers``, ``machines.bootstrap`` and ``machines.runtime`` under the distribution ``container-machines``.

``python -m build`` makes an sdist and, from it, a wheel of a clean copy of the checkout; the wheel installs offline
into a fresh venv next to the package index's unrelated ``drivers`` and ``runtime`` (wheels prepared by
``scripts/setup.sh``, ``tests/support/wheelhouse.py``), and the installed ``machines`` creates a local machine whose
runtime answers the docker CLI.
"""

from __future__ import annotations

import configparser
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib

from machines.drivers.nshost import Bridge, IsolatedHost
from tests.foundation.test_architecture import PACKAGES
from tests.support.cli import DOCKER
from tests.support.hosts import TestHost, leftovers
from tests.support.wheelhouse import NEIGHBOURS, wheelhouse

REPO = Path(__file__).resolve().parents[2]
PYPROJECT: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
PACKAGE_DIR: dict[str, str] = SETUPTOOLS["package-dir"]  # package -> folder at the top of the repository
DIST = "container_machines-" + PYPROJECT["project"]["version"]
# The interpreter that would otherwise see this checkout or the shared venv: none of it may leak into the fresh venv.
LEAKS = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "MACHINES_DRIVER",
         "MACHINES_STORAGE_PATH", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", "DOCKER_CONTEXT")


def _tracked(folder: str) -> list[str]:
    """Files git tracks (or would: untracked but not ignored) under ``folder``, links excluded, as repository paths."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", folder],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    return sorted(name for name in listed if name and (REPO / name).is_file() and not (REPO / name).is_symlink())


def _installed_names() -> set[str]:
    """Every file of the four folders as the wheel must hold it: ``drivers/base.py`` -> ``machines/drivers/base.py``."""
    names = set()
    for package, folder in PACKAGE_DIR.items():
        for path in _tracked(folder):
            if not path.endswith((".pyc", ".pyo")):
                names.add(package.replace(".", "/") + path[len(folder):])
    return names


@pytest.mark.fast
def test_the_package_list_is_every_package_folder() -> None:
    """pyproject lists packages by hand (a mapped folder's subpackages are not discovered): a new one must be added."""
    found, without_init = set(), []
    for package, folder in PACKAGE_DIR.items():
        root = REPO / folder
        for directory, subdirs, files in os.walk(root):  # not into machines/{drivers,...}: links to the other folders
            subdirs[:] = [name for name in subdirs if name != "__pycache__" and not Path(directory, name).is_symlink()]
            dotted = ".".join([package, *Path(directory).relative_to(root).parts])
            if "__init__.py" in files:
                found.add(dotted)
            elif any(name.endswith(".py") for name in files):
                without_init.append(dotted)
    assert without_init == []  # a folder of modules without __init__.py would be left out of the wheel
    assert sorted(SETUPTOOLS["packages"]) == sorted(found)
    assert len(SETUPTOOLS["packages"]) == len(set(SETUPTOOLS["packages"]))


@pytest.mark.fast
def test_the_checkout_imports_as_installed() -> None:
    """machines/{drivers,bootstrap,runtime} are links to the top folders, as package-dir maps them, and the import
    graph test reads the same mapping."""
    assert PACKAGE_DIR == {name: folder for folder, name in PACKAGES.items()}
    for package, folder in PACKAGE_DIR.items():
        if package != folder:
            link = REPO / package.replace(".", "/")
            assert link.is_symlink() and os.readlink(link) == f"../{folder}", link
    assert set(SETUPTOOLS["package-data"]) <= set(SETUPTOOLS["packages"])


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel) that ``python -m build --sdist --wheel`` makes of a copy of the checkout's files (as git
    lists them: nothing built or cached in the working tree gets in); the wheel is built from the sdist."""
    copy = tmp_path_factory.mktemp("checkout") / "src"
    for name in subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                               capture_output=True, check=True).stdout.decode().split("\0"):
        source = REPO / name
        if name and (source.is_file() or source.is_symlink()):
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name, follow_symlinks=False)
    out = copy.parent / "dist"
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out),
                             str(copy)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return out / f"{DIST}.tar.gz", out / f"{DIST}-py3-none-any.whl"


def test_the_sdist_and_wheel_hold_every_module_under_machines(dists: tuple[Path, Path]) -> None:
    sdist, wheel = dists
    expected = _installed_names()
    assert {"machines/runtime/api/openapi.json", "machines/drivers/local.py", "machines/cli/__init__.py"} <= expected

    with tarfile.open(sdist) as archive:
        in_sdist = {member.name.partition("/")[2] for member in archive.getmembers() if member.isfile()}
    assert {"pyproject.toml", "README.md"} <= in_sdist
    assert {path for folder in PACKAGE_DIR.values() for path in _tracked(folder)} <= in_sdist

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"{DIST}.dist-info/METADATA").decode()
        entry_points = configparser.ConfigParser(delimiters=("=",))
        entry_points.read_string(archive.read(f"{DIST}.dist-info/entry_points.txt").decode())
    assert len(names) == len(set(names))
    assert {name.split("/")[0] for name in names} == {"machines", f"{DIST}.dist-info"}  # no drivers/, runtime/, ...
    assert {name for name in names if name.startswith("machines/")} == expected
    assert "Name: container-machines\n" in metadata
    assert dict(entry_points["console_scripts"]) == PYPROJECT["project"]["scripts"] == {"machines": "machines.cli:main"}
    drivers = dict(entry_points["machines.drivers"])
    assert drivers == PYPROJECT["project"]["entry-points"]["machines.drivers"]
    assert drivers["local"] == "machines.drivers.local:LocalDriver"


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would point a process at the checkout, the shared venv or the machine's pip
    settings (``--find-links``, extra indexes): the fresh venv must work from what it installed alone."""
    env = {key: value for key, value in os.environ.items() if key not in LEAKS and not key.startswith("PIP_")}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra})
    return env


@pytest.fixture(scope="module")
def venv(dists: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the index's ``drivers`` and ``runtime`` installed, then our wheel, offline."""
    wheels = str(wheelhouse())  # first: without it the test fails at once, saying how to fill it
    folder = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=300)
    pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels]
    for what in (list(NEIGHBOURS), [str(dists[1])]):
        result = subprocess.run([*pip, *what], capture_output=True, text=True, env=_clean_env(), timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
    return folder


@dataclasses.dataclass
class Installed:
    """The venv's ``machines`` on a store of the test (MACHINES_STORAGE_PATH), with local hosts on this worker's bridge,
    run outside the checkout in an environment that names neither it nor the shared venv."""

    venv: Path
    store: Path
    env: dict[str, str]

    def run(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(command, cwd=self.store.parent, capture_output=True, text=True, env=self.env,
                                timeout=600)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {result.returncode}: {result.stderr}")
        return result

    def machines(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run([str(self.venv / "bin" / "machines"), *args], check)

    def docker(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """The docker CLI after ``eval "$(machines env NAME)"``, as a user would run it."""
        script = f'eval "$({self.venv}/bin/machines env --shell bash {name})" && exec {DOCKER} "$@"'
        return self.run(["bash", "-c", script, "docker", *args])


@pytest.fixture
def installed(venv: Path, tmp_path: Path, test_bridge: Bridge) -> Iterator[Installed]:
    """The installed ``machines``; whatever the test left in its store is removed after it."""
    store = tmp_path / "store"
    env = _clean_env(MACHINES_STORAGE_PATH=str(store), HOME=str(tmp_path), MACHINES_LOCAL_BRIDGE=test_bridge.name,
                     MACHINES_LOCAL_SUBNET=test_bridge.subnet, DOCKER_CONFIG=str(tmp_path / "docker-config"))
    yield Installed(venv, store, env)
    names = [path.name for path in (store / "machines").iterdir()] if (store / "machines").is_dir() else []
    if names:
        Installed(venv, store, env).machines("rm", "-f", "-y", *names, check=False)


IMPORTS = """
import json, drivers, runtime, machines.drivers, machines.runtime
print(json.dumps({module.__name__: module.__file__ for module in (drivers, runtime, machines.drivers, machines.runtime)}))
print(json.dumps([hasattr(drivers, "web"), hasattr(runtime, "Local"), machines.runtime.VERSION]))
"""


def test_the_wheel_installs_next_to_the_index_drivers_and_runtime_and_creates_a_machine(
        installed: Installed, dists: tuple[Path, Path]) -> None:
    """One test, so that a parallel run builds the venv once (module fixtures are per worker)."""
    site = next((installed.venv / "lib").glob("python3.*/site-packages"))
    files_line, traits_line = installed.run([str(installed.venv / "bin" / "python"), "-c", IMPORTS]).stdout.splitlines()
    assert json.loads(files_line) == {
        "drivers": str(site / "drivers" / "__init__.py"), "runtime": str(site / "runtime.py"),
        "machines.drivers": str(site / "machines" / "drivers" / "__init__.py"),
        "machines.runtime": str(site / "machines" / "runtime" / "__init__.py")}
    has_web, has_local, version = json.loads(traits_line)
    assert has_web and has_local  # theirs: drivers.web, runtime.Local
    assert version  # ours: the runtime's VERSION
    assert installed.machines("version").stdout == f"machines version {PYPROJECT['project']['version']}\n"

    name = f"p{os.getpid() % 1000}{uuid.uuid4().hex[:4]}"
    installed.machines("create", "--driver", "local", name)
    assert installed.machines("ssh", name, "--", "true").returncode == 0
    assert installed.docker(name, "version", "--format", "{{.Server.Os}}").stdout == "linux\n"

    # The runtime the machine runs is the zipapp of the installed machines.runtime (the wheel's files), uploaded.
    (bundle,) = (installed.store / "cache").glob("runtime-*.pyz")
    with zipfile.ZipFile(bundle) as archive:
        bundled = {n: archive.read(n) for n in archive.namelist()
                   if not n.endswith(".pyc") and n not in ("__main__.py", "machines/__init__.py")}
    with zipfile.ZipFile(dists[1]) as archive:
        assert bundled == {n: archive.read(n) for n in archive.namelist() if n.startswith("machines/runtime/")}
    path = f"/usr/local/lib/machines/{bundle.name}"
    assert installed.machines("ssh", name, "--", "sha256sum", path).stdout.split()[0] == \
        hashlib.sha256(bundle.read_bytes()).hexdigest()

    host = IsolatedHost(str(installed.store / "machines" / name / "host"))
    record, namespaces = host.record, TestHost(host, Path()).namespaces()
    installed.machines("rm", "-y", name)
    assert list((installed.store / "machines").iterdir()) == []
    assert leftovers(record, namespaces) == []
