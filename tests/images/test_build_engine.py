"""RUN steps through the real Engine (the StepRunner adapter), no HTTP: output, exit codes, layers, cache."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile

import pytest

from machines.runtime.engine import Engine
from machines.runtime.errors import EngineError
from machines.runtime.images.builder import ImageView


@pytest.fixture(scope="module")
def engine(busybox_tar):
    base = tempfile.mkdtemp(prefix=f"imgbuild-{os.getpid()}-", dir="/tmp")
    eng = Engine(os.path.join(base, "data"), os.path.join(base, "run"))
    eng.images.import_tar(io.BytesIO(busybox_tar), repo_tag="busybox:latest")
    try:
        yield eng
    finally:
        for summary in eng.list_containers(all=True):
            try:
                eng.remove(summary["Id"], force=True, volumes=True)
            except EngineError:
                pass
        eng.close()
        shutil.rmtree(base, ignore_errors=True)


def _context(text: str) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _build(engine, text: str, **query):
    q = {"networkmode": ["none"]}
    q.update({k: v if isinstance(v, list) else [v] for k, v in query.items()})
    return list(engine.image_service.build(engine, _context(text), q, None))


DOCKERFILE = """FROM busybox:latest
ARG WHO=world
ENV GREETING=hello
RUN echo "$GREETING $WHO" > /greeting && rm /bin/vi && mkdir -p /data && echo out && echo err >&2
RUN ["/bin/sh", "-c", "cat /greeting"]
CMD ["cat", "/greeting"]
"""


def test_run_steps_commit_layers_and_reuse_the_cache(engine):
    messages = _build(engine, DOCKERFILE, t="built:1", buildargs='{"WHO": "machines"}')
    assert not [m for m in messages if "error" in m], messages
    text = "".join(m.get("stream", "") for m in messages)
    assert "Step 4/6 : RUN echo" in text and " ---> Running in " in text and "out\n" in text and "err\n" in text
    assert "hello machines\n" in text and "Removing intermediate container" in text
    image = engine.images.resolve("built:1")
    view = ImageView(image.layer_dirs())
    assert view.lstat("greeting").open().read() == b"hello machines\n"
    assert view.lstat("bin/vi") is None and view.lstat("bin/sh") is not None  # deleted by a whiteout
    assert image.container_config["Cmd"] == ["cat", "/greeting"]
    assert engine.list_containers(all=True) == []
    again = _build(engine, DOCKERFILE, t="built:1", buildargs='{"WHO": "machines"}')
    assert sum(m.get("stream") == " ---> Using cache\n" for m in again) == 5
    assert next(m["aux"]["ID"] for m in again if "aux" in m) == image.id
    other = _build(engine, DOCKERFILE, buildargs='{"WHO": "you"}')
    assert next(m["aux"]["ID"] for m in other if "aux" in m) != image.id


def test_failing_run_reports_the_exit_code(engine):
    messages = _build(engine, "FROM busybox:latest\nRUN echo failing; exit 3\n")
    assert messages[-1] == {"errorDetail": {"code": 3, "message": "The command '/bin/sh -c echo failing; exit 3' "
                                                                  "returned a non-zero code: 3"},
                            "error": "The command '/bin/sh -c echo failing; exit 3' returned a non-zero code: 3"}
    assert any(m.get("stream") == "failing\n" for m in messages)
    assert engine.list_containers(all=True) == []
