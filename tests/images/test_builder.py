"""Dockerfile parsing and the builder's engine-free steps: multi-stage COPY, ADD of tars, cache, safety."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from machines.runtime.errors import InvalidParameter
from machines.runtime.images import dockerfile, reference
from machines.runtime.images.builder import NOP, ImageView, build
from machines.runtime.images.store import ImageStore

DOCKERFILE = b"""# syntax=docker/dockerfile:1
ARG BASE=busybox:test
FROM ${BASE} AS build
COPY app/ /src/
WORKDIR /src/sub
ENV GREETING="hello world" \\
    OTHER=x
FROM scratch AS final
COPY --from=build /src/hello.txt /out/
ADD bundle.tar.gz /opt/
CMD ["/bin/sh"]
LABEL a=b
EXPOSE 8080/udp 80
HEALTHCHECK --interval=5s --retries=2 CMD wget -q localhost || exit 1
STOPSIGNAL SIGINT
"""


def _tar(files: dict, gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if isinstance(data, tuple):  # ("symlink", target)
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


BUNDLE = _tar({"inner/x.txt": b"inner"}, gz=True)  # once: gzip headers carry the time of writing


@pytest.fixture
def base(store, busybox_tar):
    return store.import_tar(io.BytesIO(busybox_tar), "busybox:test")


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory, busybox_tar):
    """One store with busybox for the error cases, which add no images."""
    store = ImageStore(str(tmp_path_factory.mktemp("builder") / "store"))
    store.import_tar(io.BytesIO(busybox_tar), "busybox:test")
    return store


def _context(dockerfile_text: bytes = DOCKERFILE, **extra) -> bytes:
    """A context as the docker CLI sends it: app/debug.log already left out by .dockerignore."""
    files = {"Dockerfile": dockerfile_text, "app/hello.txt": b"hi", ".dockerignore": b"**/*.log\n",
             "bundle.tar.gz": BUNDLE}
    files.update(extra)
    return _tar(files)


def _errors(messages):
    return [m["error"] for m in messages if "error" in m]


def test_parser_forms_continuations_and_directives():
    text = ("# escape=`\nFROM alpine\n# comment\nRUN echo a `\n  && echo b\nCMD [\"sh\", \"-c\"]\n"
            "ENV A=1 B=\"two words\"\n")
    ins = dockerfile.parse(text)
    assert [i.cmd for i in ins] == ["FROM", "RUN", "CMD", "ENV"]
    assert ins[1].args == ["echo a   && echo b"] and not ins[1].json_form
    assert ins[2].args == ["sh", "-c"] and ins[2].json_form
    assert dockerfile.key_values(ins[3], {}) == [("A", "1"), ("B", "two words")]
    copy = dockerfile.parse_line("COPY --from=build --chown=1:2 a b /d/")
    assert copy.flags == {"from": "build", "chown": "1:2"} and copy.args == ["a b /d/"]
    with pytest.raises(InvalidParameter, match="unknown instruction: FORM"):
        dockerfile.parse("FORM alpine\n")


def test_variable_expansion_and_config_instructions():
    env = {"A": "x", "EMPTY": ""}
    assert dockerfile.words("$A ${A}y '${A}' \"$A z\" ${EMPTY:-d} ${A:+alt} \\$A", env) == \
        ["x", "xy", "${A}", "x z", "d", "alt", "$A"]
    config = dockerfile.apply_changes({}, ['CMD ["sh"]', "ENV K legacy value", "WORKDIR /a", "WORKDIR b",
                                          "USER 1000:1000", "VOLUME /data", "ONBUILD RUN true"])
    assert config == {"Cmd": ["sh"], "Env": ["K=legacy value"], "WorkingDir": "/a/b", "User": "1000:1000",
                      "Volumes": {"/data": {}}, "OnBuild": ["RUN true"]}
    with pytest.raises(InvalidParameter, match="run is not a valid change command"):
        dockerfile.apply_changes({}, ["RUN true"])


def test_multi_stage_build_and_cached_rebuild(store, base):
    first = list(build(store, io.BytesIO(_context()), tags=["demo:1", "localhost:5000/demo:2"]))
    assert not _errors(first)
    streams = [m["stream"] for m in first if "stream" in m]
    assert streams[0] == "Step 1/13 : ARG BASE=busybox:test\n"
    assert "Step 7/13 : COPY --from=build /src/hello.txt /out/\n" in streams
    image_id = next(m["aux"]["ID"] for m in first if "aux" in m)
    assert streams[-3:] == [f"Successfully built {image_id[7:19]}\n", "Successfully tagged demo:1\n",
                            "Successfully tagged localhost:5000/demo:2\n"]
    image = store.resolve("demo:1")
    assert image.id == image_id
    view = ImageView(image.layer_dirs())
    assert view.listdir("") == ["opt", "out"] and view.listdir("opt/inner") == ["x.txt"]
    cfg = image.container_config
    assert cfg["Cmd"] == ["/bin/sh"] and cfg["Labels"] == {"a": "b"} and cfg["StopSignal"] == "SIGINT"
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "8080/udp": {}}
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q localhost || exit 1"], "Interval": 5_000_000_000,
                                  "Retries": 2}
    second = list(build(store, io.BytesIO(_context()), tags=["demo:1"]))
    assert sum(m.get("stream") == " ---> Using cache\n" for m in second) == 10
    assert next(m["aux"]["ID"] for m in second if "aux" in m) == image_id
    third = list(build(store, io.BytesIO(_context()), nocache=True))
    assert not any(m.get("stream") == " ---> Using cache\n" for m in third)
    changed = list(build(store, io.BytesIO(_context(**{"app/hello.txt": b"changed"}))))
    assert next(m["aux"]["ID"] for m in changed if "aux" in m) != image_id


def test_target_build_args_and_stage_contents(store, base):
    messages = list(build(store, io.BytesIO(_context()), target="build", build_args={"BASE": "busybox:test"},
                          tags=["stage:1"]))
    assert not _errors(messages)
    assert messages[1]["stream"] == "Step 2/5 : FROM ${BASE} AS build\n"
    image = store.resolve("stage:1")
    assert image.container_config["WorkingDir"] == "/src/sub"
    assert "GREETING=hello world" in image.container_config["Env"]
    view = ImageView(image.layer_dirs())
    assert view.listdir("src") == ["hello.txt", "sub"]
    assert view.lstat("bin/busybox") is not None


@pytest.mark.parametrize("text, extra, message", [
    (b"FROM busybox:test\nCOPY ../secret /x\n", {}, "forbidden path outside the build context"),
    # moby resolves the link inside the context (FollowSymlinkInScope): <context>/etc/passwd does not exist
    (b"FROM busybox:test\nCOPY link/passwd /x\n", {"link": ("symlink", "/etc")},
     "file not found in build context or excluded"),
    (b"FROM busybox:test\nCOPY app/debug.log /x\n", {}, "file not found in build context or excluded"),
    (b"FROM busybox:test\nADD evil.tar /x/\n", {"evil.tar": _tar({"../../escape": b"x"})}, "escapes the layer"),
    (b"FROM busybox:test\nRUN true\n", {}, "RUN needs the container engine"),
    (b"RUN true\n", {}, "no build stage in current context"),
    (b"FROM busybox:test\n", {}, None),
])
def test_build_errors_are_reported_in_band(shared_store, text, extra, message):
    store = shared_store
    messages = list(build(store, io.BytesIO(_context(text, **extra))))
    errors = _errors(messages)
    if message is None:
        assert not errors
    else:
        assert len(errors) == 1 and message in errors[0]
        assert messages[-1]["errorDetail"]["message"] == errors[0]
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_hostile_context_is_refused(shared_store):
    context = _tar({"Dockerfile": b"FROM busybox:test\n", "../../outside": b"x"})
    [error] = _errors(build(shared_store, io.BytesIO(context)))
    assert "escapes the layer" in error


def test_copy_into_existing_dir_with_chown_chmod_quiet_and_labels(store, base):
    text = b"FROM busybox:test\nCOPY --chown=1000:2000 --chmod=600 app/hello.txt /bin\nCOPY app/hello.txt /new/name\n"
    messages = list(build(store, io.BytesIO(_context(text)), quiet=True, labels={"team": "images"}))
    image_id = next(m["aux"]["ID"] for m in messages if "aux" in m)
    assert [m for m in messages if "stream" in m] == [{"stream": image_id + "\n"}]
    image = store.resolve(image_id)
    view = ImageView(image.layer_dirs())
    hello = view.lstat("bin/hello.txt")
    st = hello.st
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1000, 2000, 0o600) and hello.open().read() == b"hi"
    assert view.lstat("bin/busybox") is not None and view.lstat("new/name").open().read() == b"hi"
    assert image.container_config["Labels"] == {"team": "images"}
    again = list(build(store, io.BytesIO(_context(text)), quiet=True, labels={"team": "images"}))
    assert next(m["aux"]["ID"] for m in again if "aux" in m) == image_id


def test_context_that_ends_without_padding_or_end_blocks(store, base):
    """The docker CLI sends a Dockerfile from outside the context appended after the last file's bytes, with no
    padding and no end-of-archive blocks (Go's archive/tar reads that); a cut inside a file is still refused."""
    whole = _context(b"FROM busybox:test\nCOPY app/hello.txt /hello\n", **{"z-last.txt": b"last bytes"})
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        last = tar.getmembers()[-1]
    assert last.name == "z-last.txt"
    unpadded = whole[:last.offset_data + last.size]
    assert not _errors(build(store, io.BytesIO(unpadded)))
    [error] = _errors(build(store, io.BytesIO(unpadded[:-3])))
    assert "unexpected end of data" in error


def test_cache_from_an_image_whose_history_names_missing_layers(store, base):
    """A loaded image's history is data: one that claims a layer it does not have is no cache, never a crash."""
    parent = store.resolve(base)
    config = json.loads(store.get_blob(parent.id))
    config["history"] = list(config.get("history") or []) + [{"created_by": NOP + "ENV A=1"}]  # no empty_layer
    crafted = store.register(json.dumps(config).encode(), tags=[reference.parse("crafted:1")])
    text = b"FROM busybox:test\nENV A=1\n"
    messages = list(build(store, io.BytesIO(_context(text)), cache_from=["crafted:1"]))
    assert not _errors(messages) and {"stream": " ---> Using cache\n"} not in messages
    assert next(m["aux"]["ID"] for m in messages if "aux" in m) != crafted.id
