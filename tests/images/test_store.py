"""Import, load, save, tag, remove, prune and commit as Docker clients see them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import threading

import pytest

from machines.runtime.errors import Conflict, InvalidParameter, NotFound
from machines.runtime.images import archive
from tests.images.conftest import make_tar

SUMMARY_KEYS = {"Id", "ParentId", "RepoTags", "RepoDigests", "Created", "Size", "SharedSize", "Labels", "Containers"}


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _members(data: bytes) -> dict:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isreg() else m) for m in tar}


def test_import_inspect_list_history(store, busybox_tar):
    image_id = store.import_tar(io.BytesIO(busybox_tar), "busybox:test", ['CMD ["sh"]', "ENV A=b", "EXPOSE 80",
                                                                         "LABEL x=y", "WORKDIR /srv"])
    assert image_id == _sha(store.get_blob(image_id))
    [summary] = store.list()
    assert SUMMARY_KEYS <= set(summary)
    assert summary["RepoTags"] == ["busybox:test"] and summary["Labels"] == {"x": "y"}
    assert summary["Size"] > 1_000_000
    info = store.inspect("docker.io/library/busybox:test")
    assert info["Id"] == image_id and info["Config"]["Cmd"] == ["sh"] and info["Config"]["Env"] == ["A=b"]
    assert info["Config"]["ExposedPorts"] == {"80/tcp": {}} and info["Config"]["WorkingDir"] == "/srv"
    assert info["RootFS"] == {"Type": "layers", "Layers": [_sha(busybox_tar)]}
    assert info["Created"].endswith("Z") and info["Os"] == "linux"
    [step] = store.history(image_id[7:19])
    assert step["Id"] == image_id and step["Tags"] == ["busybox:test"] and step["Size"] == summary["Size"]
    dirs = store.resolve("busybox:test").layer_dirs()
    assert os.path.islink(os.path.join(dirs[0], "bin", "sh"))
    assert os.readlink(os.path.join(dirs[0], "bin", "sh")) == "/bin/busybox"


def test_extraction_preserves_owner_mode_xattrs_times_and_hardlinks(store):
    data = make_tar([("d", "dir", None), ("d/f", "file", b"hello"), ("d/h", "hardlink", "d/f"),
                     ("d/s", "symlink", "f"), ("p", "fifo", None)],
                    pax={"d/f": {"SCHILY.xattr.user.colour": "blue", "uid": "1234", "gid": "99"}})
    store.import_tar(io.BytesIO(data), "attrs:1")
    root = store.resolve("attrs:1").layer_dirs()[0]
    st = os.lstat(os.path.join(root, "d", "f"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), int(st.st_mtime)) == (1234, 99, 0o644, 1_600_000_000)
    assert os.getxattr(os.path.join(root, "d", "f"), "user.colour") == b"blue"
    assert os.lstat(os.path.join(root, "d", "h")).st_ino == st.st_ino
    assert os.readlink(os.path.join(root, "d", "s")) == "f"
    assert int(os.lstat(os.path.join(root, "d")).st_mtime) == 1_600_000_000
    assert stat.S_ISFIFO(os.lstat(os.path.join(root, "p")).st_mode)


def test_not_found_wording_and_tags(store, busybox_tar):
    with pytest.raises(NotFound, match="^No such image: alpine:latest$"):
        store.resolve("alpine")
    image_id = store.import_tar(io.BytesIO(busybox_tar), "busybox:test")
    store.tag("busybox:test", "localhost:5000/x", None)
    store.tag(image_id, "localhost:5000/x", "v1")
    assert store.resolve("localhost:5000/x").repo_tags == ["busybox:test", "localhost:5000/x:latest",
                                                         "localhost:5000/x:v1"]
    with pytest.raises(NotFound, match="No such image: nope:latest"):
        store.tag("nope", "a", "b")


def test_remove_untag_conflicts_force_and_prune(store, busybox_tar):
    image_id = store.import_tar(io.BytesIO(busybox_tar), "busybox:test")
    store.tag("busybox:test", "other", "1")
    with pytest.raises(Conflict, match="referenced in multiple repositories"):
        store.remove(image_id)
    assert store.remove("other:1") == [{"Untagged": "other:1"}]
    with pytest.raises(Conflict, match='unable to remove repository reference "busybox:test" .* container '
                                       'abcdefabcdef is using its referenced image'):
        store.remove("busybox:test", in_use=lambda i: "abcdefabcdef123")
    items = store.remove("busybox:test", force=True, in_use=lambda i: "abcdefabcdef123")
    assert items == [{"Untagged": "busybox:test"}] and store.resolve(image_id)  # kept for its container
    assert store.prune(in_use=lambda i: "c1")["ImagesDeleted"] is None
    result = store.prune()
    assert {"Deleted": image_id} in result["ImagesDeleted"] and result["SpaceReclaimed"] > 1_000_000
    assert os.listdir(os.path.join(store.root, "layers")) == []
    with pytest.raises(NotFound, match="No such image: x"):
        store.remove("x")


def test_layers_are_shared_and_removed_with_their_last_image(store, busybox_tar):
    a = store.import_tar(io.BytesIO(busybox_tar), "a:1")
    b = store.import_tar(io.BytesIO(busybox_tar), "b:1", ["CMD [\"sh\"]"])
    assert a != b and len(os.listdir(os.path.join(store.root, "layers"))) == 1
    assert store.remove("a:1") == [{"Untagged": "a:1"}, {"Deleted": a}]
    items = store.remove("b:1")
    assert items[:2] == [{"Untagged": "b:1"}, {"Deleted": b}] and items[2]["Deleted"] == _sha(busybox_tar)


def test_concurrent_imports_of_one_layer(store, busybox_tar):
    errors = []

    def work(n: int) -> None:
        try:
            store.import_tar(io.BytesIO(busybox_tar), f"c:{n}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(os.listdir(os.path.join(store.root, "layers"))) == 1
    assert sorted(t for s in store.list() for t in s["RepoTags"]) == ["c:0", "c:1", "c:2", "c:3"]


def test_save_output_is_what_docker_loads(service, store, busybox_tar):
    image_id = store.import_tar(io.BytesIO(busybox_tar), "busybox:test")
    store.tag(image_id, "localhost:5000/x", "v1")
    data = b"".join(service.save(["busybox:test", "localhost:5000/x:v1"]))
    files = _members(data)
    for name, content in files.items():
        if name.startswith("blobs/sha256/") and isinstance(content, bytes):
            assert _sha(content)[7:] == name.rsplit("/", 1)[1]
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    [entry] = json.loads(files["manifest.json"])
    assert entry["RepoTags"] == ["busybox:test", "localhost:5000/x:v1"]
    assert files[entry["Config"]] == store.get_blob(image_id)
    assert [_sha(files[p]) for p in entry["Layers"]] == [_sha(busybox_tar)]
    index = json.loads(files["index.json"])
    names = sorted(m["annotations"]["io.containerd.image.name"] for m in index["manifests"])
    assert names == ["docker.io/library/busybox:test", "localhost:5000/x:v1"]
    manifest = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
    assert manifest["config"]["digest"] == image_id
    assert [layer["digest"] for layer in manifest["layers"]] == [_sha(busybox_tar)]
    assert json.loads(files["repositories"])["busybox"]["test"] == _sha(busybox_tar)[7:]
    store.remove(image_id, force=True)
    assert service.load(io.BytesIO(data)) == ["busybox:test", "localhost:5000/x:v1"]
    assert store.resolve("localhost:5000/x:v1").id == image_id


def test_load_legacy_docker_save_with_shared_symlinked_layer(service, store, busybox_tar):
    extra = make_tar([("hello", "file", b"hi")])
    base = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [_sha(busybox_tar)]}}
    child = dict(base, rootfs={"type": "layers", "diff_ids": [_sha(busybox_tar), _sha(extra)]})
    cfg1, cfg2 = json.dumps(base).encode(), json.dumps(child).encode()
    archive_bytes = make_tar([
        ("l1", "dir", None), ("l1/VERSION", "file", b"1.0"), ("l1/layer.tar", "file", busybox_tar),
        ("l2", "dir", None), ("l2/layer.tar", "symlink", "../l1/layer.tar"),
        ("l3/layer.tar", "file", extra),
        (_sha(cfg1)[7:] + ".json", "file", cfg1), (_sha(cfg2)[7:] + ".json", "file", cfg2),
        ("manifest.json", "file", json.dumps([
            {"Config": _sha(cfg1)[7:] + ".json", "RepoTags": ["base:1"], "Layers": ["l1/layer.tar"]},
            {"Config": _sha(cfg2)[7:] + ".json", "RepoTags": ["child:1", "docker.io/team/child:2"],
             "Layers": ["l2/layer.tar", "l3/layer.tar"]}]).encode()),
        ("repositories", "file", b"{}")], gz=True)
    assert service.load(io.BytesIO(archive_bytes)) == ["base:1", "child:1", "team/child:2"]
    assert store.resolve("child:1").id == _sha(cfg2)
    assert len(os.listdir(os.path.join(store.root, "layers"))) == 2
    top = store.resolve("team/child:2").layer_dirs()
    assert open(os.path.join(top[1], "hello")).read() == "hi" and len(top) == 2


def test_load_oci_layout_with_gzip_layer_and_platform_index(service, store):
    layer = make_tar([("etc", "dir", None), ("etc/os-release", "file", b"ID=test\n")])
    gz = io.BytesIO()
    import gzip
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as f:
        f.write(layer)
    blob = gz.getvalue()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [_sha(layer)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"digest": _sha(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": _sha(blob), "size": len(blob)}]}).encode()
    other = b'{"schemaVersion":2,"layers":[]}'
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _sha(manifest),
         "size": len(manifest), "platform": {"os": "linux", "architecture": "amd64"},
         "annotations": {"io.containerd.image.name": "localhost:5000/oci:1"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _sha(other),
         "size": len(other), "platform": {"os": "linux", "architecture": "s390x"}}]}
    data = make_tar([("oci-layout", "file", b'{"imageLayoutVersion":"1.0.0"}'),
                     ("index.json", "file", json.dumps(index).encode())] +
                    [("blobs/sha256/" + _sha(b)[7:], "file", b) for b in (blob, config, manifest, other)])
    assert service.load(io.BytesIO(data)) == ["localhost:5000/oci:1"]
    root = store.resolve("localhost:5000/oci:1").layer_dirs()[0]
    assert open(os.path.join(root, "etc/os-release")).read() == "ID=test\n"
    # the gzip blob is kept as received and save hands back the uncompressed tar
    files = _members(b"".join(service.save(["localhost:5000/oci:1"])))
    assert files["blobs/sha256/" + _sha(layer)[7:]] == layer


def test_load_refuses_layer_that_does_not_match_its_diff_id(service, store):
    layer = make_tar([("a", "file", b"a")])
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]}}).encode()
    data = make_tar([("c.json", "file", config), ("layer.tar", "file", layer), ("manifest.json", "file", json.dumps(
        [{"Config": "c.json", "RepoTags": ["bad:1"], "Layers": ["layer.tar"]}]).encode())])
    with pytest.raises(InvalidParameter, match="diff ID mismatch"):
        service.load(io.BytesIO(data))
    assert store.list() == [] and os.listdir(os.path.join(store.root, "layers")) == []


def test_commit_turns_overlay_whiteouts_into_oci_ones(service, store, busybox_tar, tmp_path):
    base = store.resolve(store.import_tar(io.BytesIO(busybox_tar), "busybox:test"))
    upper = tmp_path / "upper"
    (upper / "etc" / "opaque").mkdir(parents=True)
    (upper / "etc" / "new").write_text("new")
    os.mknod(upper / "etc" / "gone", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    os.setxattr(upper / "etc" / "opaque", "trusted.overlay.opaque", b"y")
    image = store.commit(str(upper), base, {"Cmd": ["cat", "/etc/new"]}, "committed:1", created_by="RUN x")
    assert image.parent == base.id and image.config["config"]["Cmd"] == ["cat", "/etc/new"]
    assert len(image.diff_ids) == 2 and image.config["history"][-1]["created_by"] == "RUN x"
    layer_tar = _members(b"".join(service.save(["committed:1"])))["blobs/sha256/" + image.diff_ids[1][7:]]
    names = set(_members(layer_tar))
    assert {"etc/.wh.gone", "etc/opaque/.wh..wh..opq", "etc/new"} <= names
    top = image.layer_dirs()[1]
    assert os.stat(os.path.join(top, "etc", "gone")).st_rdev == 0
    assert os.getxattr(os.path.join(top, "etc", "opaque"), "trusted.overlay.opaque") == b"y"
    assert store.history("committed:1")[1]["Id"] == base.id
    # removing the child by name keeps the tagged parent
    assert [list(i) for i in store.remove("committed:1")][:2] == [["Untagged"], ["Deleted"]]
    assert store.resolve("busybox:test").id == base.id


def test_header_stream_round_trip_of_upper_dir(tmp_path):
    upper = tmp_path / "u"
    upper.mkdir()
    (upper / "a").write_bytes(b"x" * 70000)
    os.link(upper / "a", upper / "b")
    os.symlink("/nowhere", upper / "c")
    data = b"".join(archive.upper_dir_tar(str(upper)))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar}
        assert members["b"].islnk() and members["b"].linkname == "a"
        assert members["c"].linkname == "/nowhere" and tar.extractfile("a").read() == b"x" * 70000


@pytest.mark.parametrize("compress", [["gzip", "-c"], ["zstd", "-q", "-c"]])
def test_import_of_compressed_rootfs(store, busybox_tar, tmp_path, compress):
    import subprocess
    data = subprocess.run(compress, input=busybox_tar, stdout=subprocess.PIPE, check=True).stdout
    image = store.resolve(store.import_tar(io.BytesIO(data), "packed:1"))
    assert image.diff_ids == [_sha(busybox_tar)]
    assert os.path.exists(os.path.join(image.layer_dirs()[0], "bin", "busybox"))
