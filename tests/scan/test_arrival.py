"""Scan on arrival in the runtime: pulls and builds of images over the machine's threshold are refused and removed."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from machines.runtime.errors import InvalidParameter
from machines.runtime.images.scan.arrival import ScanRefused
from machines.runtime.images.service import ImageService
from machines.runtime.images.store import ImageStore
from tests.scan import fixtures
from tests.support import busybox
from tests.trust.conftest import drop_all_images

OSV_DB = Path(__file__).parent / "osv"
HIGH = "GHSA-35jh-r3h4-6jhm (high) in lodash 4.17.20, ALPINE-CVE-2025-26519 (high) in musl 1.2.3-r0"


@pytest.fixture
def service(tmp_path) -> ImageService:
    data = tmp_path / "data"
    shutil.copytree(OSV_DB, data / "osv")
    return ImageService(ImageStore(str(data / "image")))


def _settings(service: ImageService, **doc) -> None:
    Path(service.arrival.path).write_text(json.dumps(doc))


def _push_alpine_fixture(service: ImageService, name: str) -> None:
    base, _ = fixtures.alpine_layers()
    service.store.import_tar(io.BytesIO(base), name)
    list(service.push(name))


def _context(dockerfile: str) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile.encode()))
    buffer.seek(0)
    return buffer


def test_a_pull_over_the_threshold_is_refused_and_removed(service, registry):
    vulnerable, clean = f"{registry.host}/team/alpine:1", f"{registry.host}/team/busybox:1"
    _push_alpine_fixture(service, vulnerable)
    service.store.import_tar(io.BytesIO(busybox.rootfs()), clean)
    list(service.push(clean))
    drop_all_images(service.store)

    _settings(service, fail_on="critical")
    list(service.pull(vulnerable))  # nothing critical in it
    drop_all_images(service.store)
    _settings(service, fail_on="high")
    with pytest.raises(ScanRefused) as refused:
        list(service.pull(vulnerable))
    assert str(refused.value) == (f"{vulnerable}: refused by the engine's scan policy: 2 vulnerabilities at or above "
                                  f"high: {HIGH}")
    assert not service.store.exists(vulnerable)
    list(service.pull(clean))  # nothing known in it
    assert service.store.exists(clean)

    _settings(service, fail_on="medium")
    with pytest.raises(ScanRefused, match=r"3 vulnerabilities at or above medium: GHSA-35jh-r3h4-6jhm \(high\) "
                                          r"in lodash 4.17.20, ALPINE-CVE-2025-26519 \(high\) in musl 1.2.3-r0, "
                                          r"GHSA-j8r2-6x86-q33q \(medium\) in requests 2.28.0$"):
        list(service.pull(vulnerable))
    Path(service.arrival.path).unlink()  # off again: Docker's behaviour
    list(service.pull(vulnerable))
    assert service.store.exists(vulnerable)


def test_a_build_over_the_threshold_ends_with_the_refusal(service):
    base, _ = fixtures.alpine_layers()
    service.store.import_tar(io.BytesIO(base), "local/alpine:1")  # loaded, not arrived: not scanned itself
    _settings(service, fail_on="high")
    messages = list(service.build(None, _context("FROM local/alpine:1\nLABEL built=yes\n"), {"t": ["app:1"]}))
    assert messages[-1]["error"].endswith(f"refused by the engine's scan policy: 2 vulnerabilities at or above "
                                          f"high: {HIGH}")
    assert not any("Successfully built" in m.get("stream", "") for m in messages)
    assert not service.store.exists("app:1")
    _settings(service, fail_on="high", ignore_unfixed=True)  # both have a fix: still refused
    assert "error" in list(service.build(None, _context("FROM local/alpine:1\nLABEL x=1\n"), {"t": ["app:1"]}))[-1]
    _settings(service, fail_on="high")
    ok = list(service.build(None, _context("FROM scratch\nLABEL empty=yes\n"), {"t": ["empty:1"]}))
    assert "error" not in ok[-1] and service.store.exists("empty:1")


def test_bad_settings_fail_closed(service, registry):
    name = f"{registry.host}/team/alpine:1"
    _push_alpine_fixture(service, name)
    _settings(service, fail_on="everything")
    with pytest.raises(InvalidParameter, match="fail_on must be one of low, medium, high, critical"):
        service.pull(name)
