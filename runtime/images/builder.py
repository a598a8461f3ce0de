"""The classic builder (``POST /build``): a Dockerfile and a tar context in, Docker's JSON stream out.

Every instruction makes an image (a layer for RUN/COPY/ADD/WORKDIR, config only otherwise) whose parent is the
previous step, so the layer cache can be Docker's: a step is reused when a child of the same parent was made by
the same instruction (and, for COPY/ADD, the same content). RUN needs containers, which belong to the engine:
the builder talks to it through the small ``StepRunner`` protocol below, which the API layer wires to the Engine.

StepRunner protocol (duck-typed)::

    runner.run_build_step(image_id: str, argv: list[str], config: dict) -> step
        Create and start a container from ``image_id`` running exactly ``argv`` (no image Entrypoint/Cmd), with
        ``config["Env"]`` (list of "K=V"), ``config["WorkingDir"]``, ``config["User"]`` and the default network.
    step.id: str                       container ID (shown as "Running in <12hex>")
    step.output() -> Iterator[bytes]   stdout and stderr as they come, until the process exits
    step.wait() -> int                 the exit code (called after output() is exhausted)
    step.upper_dir: str                the container's overlay upper dir, read after wait()
    step.remove() -> None              remove the container (called after the commit, also on failure)
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import stat
from collections.abc import Generator, Iterator, Sequence
from typing import IO, Any, Callable, NamedTuple

from machines.runtime.errors import EngineError, InvalidParameter, NotFound
from machines.runtime.images import archive, dockerfile, ignore, reference
from machines.runtime.images.dockerfile import Instruction
from machines.runtime.images.media import canonical_json
from machines.runtime.images.store import Image, ImageStore
from machines.runtime.linux import safepath

NOP = "/bin/sh -c #(nop) "
PullFn = Callable[[str], Iterator[dict]]  # pulls a reference with the build's credentials (the image service's)
CACHE_FILE = "build-cache.json"
# Docker's predefined ARGs: a RUN sees them without an ARG line, and they stay out of the history and cache key.
PROXY_ARGS = frozenset(name for key in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
                       for name in (key, key.lower()))


class BuildFailed(EngineError):
    """A RUN step exited non-zero; ``code`` is its exit status (sent in ``errorDetail.code``)."""

    status = 400

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _stream(text: str) -> dict:
    return {"stream": text}


def _error(exc: EngineError | OSError) -> dict:
    """A failed build's last message, as dockerd's stream formatter writes it."""
    message = str(exc) if isinstance(exc, EngineError) else f"{exc.strerror or exc}: {exc.filename or ''}"
    return {"errorDetail": {"message": message}, "error": message}


# --- reading files from an image or the context (COPY, COPY --from) ----------------------------------------------

def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class Found(NamedTuple):
    """An entry of an ImageView: the layer that provides it, its path there and its lstat."""

    layer: safepath.Root
    rel: str
    st: os.stat_result

    def open(self) -> IO[bytes]:
        return os.fdopen(self.layer.open(self.rel, os.O_RDONLY, follow=False), "rb")


class ImageView:
    """Read-only merged view of layer directories (what overlayfs would show), without mounting anything.

    Each layer is read through a ``safepath.Root`` that refuses symlinks: a link only means something in the merged
    image, so ``resolve`` follows it here, against the view's own root. Lookups follow overlay's rules: a
    non-directory or a whiteout in a layer hides everything below it, and an opaque directory hides the same
    directory in the layers below. A build context is a view of one layer."""

    def __init__(self, layer_dirs: list[str]) -> None:
        self.layers = [safepath.Root(d, follow_links=False) for d in reversed(layer_dirs)]
        self._merged: dict[tuple[str, ...], list[safepath.Root]] = {(): self.layers}

    def _dir_layers(self, parts: tuple[str, ...]) -> list[safepath.Root]:
        """The layers whose copy of directory ``parts`` shows in the view, top first ([] if it is no directory)."""
        if parts not in self._merged:
            rel = "/".join(parts)
            out: list[safepath.Root] = []
            for layer in self._dir_layers(parts[:-1]):
                try:
                    st = layer.lstat(rel)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    break  # a file, link or whiteout hides this path in every layer below
                out.append(layer)
                if layer.getxattr(rel, archive.OVERLAY_OPAQUE_XATTR) == b"y":
                    break
            self._merged[parts] = out
        return self._merged[parts]

    def lstat(self, rel: str) -> Found | None:
        """The entry ``rel`` (its last component not followed) in the topmost layer that has it; None if absent or
        whited out."""
        parts = tuple(safepath.split(rel))
        if not parts:
            return Found(self.layers[0], "", self.layers[0].lstat("")) if self.layers else None
        for layer in self._dir_layers(parts[:-1]):
            try:
                st = layer.lstat("/".join(parts))
            except FileNotFoundError:
                continue
            return None if _is_whiteout(st) else Found(layer, "/".join(parts), st)
        return None

    def listdir(self, rel: str) -> list[str]:
        parts = tuple(safepath.split(rel))
        names: dict[str, bool] = {}
        for layer in self._dir_layers(parts):
            for name in layer.listdir("/".join(parts)):
                if name not in names:
                    names[name] = not _is_whiteout(layer.lstat("/".join(parts + (name,))))
        return sorted(n for n, present in names.items() if present)

    def resolve(self, rel: str, depth: int = 0) -> str:
        """Follow symlinks inside the view (scoped to its root) to the final relative path."""
        parts = safepath.split(rel)
        out: list[str] = []
        for i, part in enumerate(parts):
            if part == "..":
                if out:
                    out.pop()
                continue
            out.append(part)
            found = self.lstat("/".join(out))
            if found and stat.S_ISLNK(found.st.st_mode):
                if depth > safepath.MAX_LINKS:
                    raise InvalidParameter(f"too many levels of symbolic links: {rel}")
                target = found.layer.readlink(found.rel)
                base = "" if target.startswith("/") else "/".join(out[:-1])
                return self.resolve(posixpath.join(base, target, *parts[i + 1:]), depth + 1)
        return "/".join(out)

    def walk(self, rel: str = "") -> Iterator[str]:
        """Every path below ``rel`` (merged), parents first; links are not entered."""
        for name in self.listdir(rel):
            child = posixpath.join(rel, name)
            yield child
            found = self.lstat(child)
            if found is not None and stat.S_ISDIR(found.st.st_mode):
                yield from self.walk(child)


# --- the build ---------------------------------------------------------------------------------------------------

class _Stage:
    def __init__(self, name: str | None, image: Image | None, config: dict) -> None:
        self.name = name
        self.image = image
        self.config = config
        self.cmd_set = False
        self.args: dict[str, str] = {}
        self.global_args: dict[str, str] = {}


class Builder:
    """One ``docker build`` run; ``run()`` yields the JSON stream (errors in-band, as Docker sends them)."""

    def __init__(self, store: ImageStore, context: IO[bytes], *, dockerfile_path: str = "Dockerfile",
                 tags: Sequence[str] = (), build_args: dict[str, str | None] | None = None,
                 labels: dict[str, str] | None = None, target: str | None = None, nocache: bool = False,
                 runner: Any = None, pull: PullFn | None = None, quiet: bool = False,
                 cache_from: Sequence[str] = (), admit: Callable[[str, Image], None] | None = None) -> None:
        self.store = store
        self.context_stream = context
        self.dockerfile_path = dockerfile_path or "Dockerfile"
        self.tags = [reference.parse(t) for t in tags]
        self.build_args = dict(build_args or {})
        self.labels = dict(labels or {})
        self.target = target.lower() if target else None
        self.nocache = nocache
        self.runner = runner
        self.pull = pull
        self.admit = admit  # the trust policy's say on a base image already in the store
        self.cache_from = list(cache_from)
        self.cache_sources: list[Image] = []
        self.quiet = quiet
        self.work = ""
        self.result: Image | None = None
        self.context = ""
        self.stages: list[_Stage] = []

    # --- entry point --------------------------------------------------------------------------------------

    def receive_context(self) -> None:
        """Unpack the context now: the request body must be read before the response stream starts."""
        self.work = self.store.tmpdir()
        self.context = os.path.join(self.work, "context")
        try:
            archive.extract_tree(self.context_stream, self.context)
            archive.drain(self.context_stream)
        except BaseException:
            shutil.rmtree(self.work, ignore_errors=True)
            raise

    def run(self) -> Iterator[dict]:
        try:
            if not self.work:
                self.receive_context()
            self.cache_sources = self._cache_sources()
            for message in self._build():
                if not (self.quiet and "stream" in message):
                    yield message
            if self.quiet and self.result is not None:
                yield _stream(self.result.id + "\n")  # what docker build -q prints
        except BuildFailed as exc:
            yield {"errorDetail": {"code": exc.code, "message": str(exc)}, "error": str(exc)}
        except (EngineError, OSError) as exc:
            yield _error(exc)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def _read_dockerfile(self) -> list[Instruction]:
        """Parse the Dockerfile, then drop it and .dockerignore from the context where .dockerignore names them
        (dockerd's ``removeDockerfile``): clients send both even when ignored, and a Dockerfile from outside the
        context arrives as ``.dockerfile.<random>``, named in .dockerignore by the docker CLI."""
        rel = posixpath.normpath(self.dockerfile_path)
        if rel.startswith("../") or rel == ".." or os.path.isabs(rel):
            raise InvalidParameter(f"forbidden path outside the build context: {self.dockerfile_path}")
        text = self._context_text(rel)
        if text is None and rel == "Dockerfile":
            rel, text = "dockerfile", self._context_text("dockerfile")
        if text is None:
            raise InvalidParameter(f"Cannot locate specified Dockerfile: {self.dockerfile_path}")
        instructions = dockerfile.parse(text)
        self._remove_ignored(".dockerignore", rel)
        return instructions

    def _context_text(self, rel: str) -> str | None:
        """A regular file of the context (symlinks resolved inside it), or None."""
        with safepath.Root(self.context) as root:
            try:
                fd = root.open(rel, os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                return None
        with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
            return f.read() if stat.S_ISREG(os.fstat(fd).st_mode) else None

    def _remove_ignored(self, *names: str) -> None:
        text = self._context_text(".dockerignore")
        if text is None:
            return
        patterns = ignore.read_patterns(text)
        with safepath.Root(self.context) as root:
            for name in names:
                try:
                    gone = ignore.excluded(name, patterns)
                except InvalidParameter:
                    return  # as dockerd: a pattern that does not compile removes nothing
                if gone and root.lexists(name):
                    parent, base = root.open_parent(name)
                    try:
                        os.unlink(base, dir_fd=parent)
                    finally:
                        os.close(parent)

    def _plan(self, instructions: list[Instruction]) -> tuple[list[Instruction], list[Instruction]]:
        """Global ARGs, then the instructions up to the end of the target stage."""
        first_from = next((i for i, ins in enumerate(instructions) if ins.cmd == "FROM"), None)
        if first_from is None:
            raise InvalidParameter("no build stage in current context")
        head = instructions[:first_from]
        for ins in head:
            if ins.cmd != "ARG":
                raise InvalidParameter(f"{ins.cmd} not allowed before FROM")
        body = instructions[first_from:]
        if self.target is None:
            return head, body
        names = [dockerfile.stage_name(ins, {})[1] if ins.cmd == "FROM" else None for ins in body]
        if self.target not in names:
            raise InvalidParameter(f"failed to reach build target {self.target} in Dockerfile")
        start = names.index(self.target)
        end = next((i for i in range(start + 1, len(body)) if body[i].cmd == "FROM"), len(body))
        return head, body[:end]

    def _build(self) -> Iterator[dict]:
        head, body = self._plan(self._read_dockerfile())
        total = len(head) + len(body)
        global_args: dict[str, str] = {}
        step = 0
        for ins in head:
            step += 1
            yield _stream(f"Step {step}/{total} : {ins.original}\n")
            for key, default in dockerfile.key_values(ins, global_args):
                value = self.build_args.get(key)
                global_args[key] = value if value is not None else default
        stage: _Stage | None = None
        for ins in body:
            step += 1
            yield _stream(f"Step {step}/{total} : {ins.original}\n")
            if ins.cmd == "FROM":
                stage = yield from self._from(ins, global_args)
                self.stages.append(stage)
            else:
                assert stage is not None
                yield from self._step(stage, ins)
            if stage is not None and stage.image is not None:
                yield _stream(f" ---> {stage.image.id[7:19]}\n")
        assert stage is not None
        if self.labels:
            labels = dict(stage.config.get("Labels") or {})
            labels.update(self.labels)
            stage.config["Labels"] = labels
            yield from self._cached_or_commit(stage, None, NOP + "LABEL " + " ".join(
                "{}={}".format(*kv) for kv in sorted(self.labels.items())))
        if stage.image is None:
            raise InvalidParameter("No image was generated. Is your Dockerfile empty?")
        image = self.result = stage.image
        yield {"aux": {"ID": image.id}}
        yield _stream(f"Successfully built {image.id[7:19]}\n")
        for ref in self.tags:
            self.store.tag(image.id, ref.name, ref.tag)
            yield _stream(f"Successfully tagged {ref.familiar()}\n")

    # --- FROM ---------------------------------------------------------------------------------------------

    def _from(self, ins: Instruction, global_args: dict[str, str]) -> Generator[dict, None, _Stage]:
        name, alias = dockerfile.stage_name(ins, global_args)
        previous = self._stage_by_name(name)
        if previous is not None:
            image: Image | None = previous.image
        elif name == "scratch":
            image = None
        else:
            image = yield from self._base_image(name)
        config = dict(image.container_config) if image is not None else {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
        stage = _Stage(alias, image, config)
        stage.global_args = global_args
        for trigger in config.pop("OnBuild", None) or []:
            yield _stream("# Executing 1 build trigger\n")
            yield from self._step(stage, dockerfile.parse_line(trigger))
        return stage

    def _stage_by_name(self, name: str) -> _Stage | None:
        for n, stage in enumerate(self.stages):
            if stage.name == name.lower() or name == str(n):
                return stage
        return None

    def _base_image(self, name: str) -> Generator[dict, None, Image]:
        try:
            image = self.store.resolve(name)
            if self.admit is not None:
                self.admit(name, image)
            return image
        except NotFound:
            if self.pull is None:
                raise
        ref = str(reference.parse(name))
        for message in self.pull(ref):
            if "status" in message and "id" not in message:
                yield {"status": message["status"]}
        return self.store.resolve(ref)

    # --- other instructions -----------------------------------------------------------------------------

    def _env(self, stage: _Stage) -> dict[str, str]:
        """Variables for ``$VAR`` expansion: build args, overridden by ENV."""
        env = dict(stage.args)
        env.update(dockerfile.env_dict(stage.config))
        return env

    def _step(self, stage: _Stage, ins: Instruction) -> Iterator[dict]:
        if ins.cmd == "RUN":
            yield from self._run(stage, ins)
            return
        if ins.cmd in ("COPY", "ADD"):
            yield from self._copy(stage, ins)
            return
        author = ""
        if ins.cmd == "ARG":
            for key, default in dockerfile.key_values(ins, self._env(stage)):
                value = self.build_args.get(key)
                if value is None:
                    value = default or stage.global_args.get(key, "")
                stage.args[key] = value
        elif ins.cmd == "MAINTAINER":
            author = ins.args[0]
        else:
            if ins.cmd == "CMD":
                stage.cmd_set = True
            if ins.cmd == "ENTRYPOINT" and not stage.cmd_set:
                stage.config["Cmd"] = None
            dockerfile.apply_config(stage.config, ins, self._env(stage))
        with self.store.workdir() as work:
            upper = (lambda: self._workdir_layer(stage, work)) if ins.cmd == "WORKDIR" else None
            yield from self._cached_or_commit(stage, upper, NOP + ins.original, author=author)

    def _cache_key(self, stage: _Stage, created_by: str) -> str:
        """Docker's cache rule: same parent image, same instruction (content digests included), same config."""
        parent = stage.image.id if stage.image is not None else "scratch"
        blob = json.dumps([parent, created_by, stage.config], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cache_lookup(self, stage: _Stage, key: str, created_by: str) -> Image | None:
        """The image an identical step made here before; with ``--cache-from``, as dockerd: such an image only
        when one of the source images descends from it, else the source whose history continues with this step."""
        if self.nocache:
            return None
        local = self._local_cache(key)
        if not self.cache_sources:
            return local
        if local is not None and any(self._descends(source, local.id) for source in self.cache_sources):
            return local
        return self._source_cache(stage, created_by)

    def _local_cache(self, key: str) -> Image | None:
        try:
            with open(os.path.join(self.store.root, CACHE_FILE)) as f:
                image_id = json.load(f).get(key)
        except (FileNotFoundError, ValueError):
            return None
        if image_id and self.store.exists(image_id):
            return self.store.resolve(image_id)
        return None

    def _cache_sources(self) -> list[Image]:
        """``--cache-from`` images present here (missing ones are skipped, as dockerd skips them)."""
        sources = []
        for ref in self.cache_from:
            try:
                sources.append(self.store.resolve(ref))
            except (NotFound, InvalidParameter):
                continue
        return sources

    def _descends(self, image: Image, ancestor_id: str) -> bool:
        """Whether ``ancestor_id`` is ``image`` or one of its parents (dockerd's ``isParent``)."""
        image_id, seen = image.id, set()
        while image_id and image_id not in seen:  # parent links of loaded images are data: never loop on them
            if image_id == ancestor_id:
                return True
            seen.add(image_id)
            image_id = self.store.resolve(image_id).parent if self.store.exists(image_id) else ""
        return False

    def _source_cache(self, stage: _Stage, created_by: str) -> Image | None:
        """dockerd's ``ImageCache.GetCache`` over the ``--cache-from`` images: a source whose history and layers
        start with the parent's and whose next history entry was made by this step gives the cached image."""
        parent = stage.image
        history = list(parent.config.get("history") or []) if parent is not None else []
        diff_ids = list(parent.diff_ids) if parent is not None else []
        for source in self.cache_sources:
            source_history = source.config.get("history") or []
            if not _continues(source, source_history, history, diff_ids):
                continue
            step = source_history[len(history)]
            if step.get("created_by") != created_by:
                continue
            if not step.get("empty_layer") and len(diff_ids) >= len(source.diff_ids):
                continue  # a history that names more layers than the image has: nothing to take from it
            self.cache_sources = [source]  # as dockerd: no jumping to another source half-way
            if len(source_history) == len(history) + 1:
                if parent is not None:  # the source itself: it becomes the child of this build's parent
                    self.store.register(self.store.get_blob(source.id), parent=parent.id)
                return self.store.resolve(source.id)
            return self._restore(parent, source, history + [step], diff_ids, stage.config)
        return None

    def _restore(self, parent: Image | None, source: Image, history: list[dict], diff_ids: list[str],
                 config: dict) -> Image:
        """An intermediate image of ``source``: the parent plus the source's next step (and its layer)."""
        if not history[-1].get("empty_layer"):  # the source's layers begin with the parent's (``_continues``)
            diff_ids = diff_ids + [source.diff_ids[len(diff_ids)]]
        step = history[-1]
        image = {key: source.config[key] for key in ("architecture", "os", "variant", "author", "os.version")
                 if key in source.config}
        image.update({"config": config, "created": step.get("created"), "history": history,
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}})
        return self.store.register(canonical_json(image), parent=parent.id if parent is not None else "")

    def _cache_record(self, key: str, image: Image) -> None:
        path = os.path.join(self.store.root, CACHE_FILE)
        with self.store.lock:
            try:
                with open(path) as f:
                    cache = json.load(f)
            except (FileNotFoundError, ValueError):
                cache = {}
            cache[key] = image.id
            self.store._write_atomic(path, json.dumps(cache).encode())

    def _commit(self, stage: _Stage, upper: str | None, created_by: str, author: str = "") -> Image:
        return self.store.commit(upper, stage.image, dict(stage.config), created_by=created_by, author=author)

    def _from_cache(self, stage: _Stage, key: str, created_by: str) -> Generator[dict, None, bool]:
        """Take the image an identical step made before (saying ``Using cache``); False when there is none."""
        cached = self._cache_lookup(stage, key, created_by)
        if cached is None:
            return False
        yield _stream(" ---> Using cache\n")
        stage.image = cached
        return True

    def _cached_or_commit(self, stage: _Stage, upper: Callable[[], str | None] | None, created_by: str,
                          author: str = "") -> Iterator[dict]:
        """Reuse the image an identical step made before (``Using cache``), or make the layer with ``upper()``
        (None: config only) and commit a new one."""
        key = self._cache_key(stage, created_by)
        if (yield from self._from_cache(stage, key, created_by)):
            return
        stage.image = self._commit(stage, upper() if upper is not None else None, created_by, author)
        self._cache_record(key, stage.image)

    def _workdir_layer(self, stage: _Stage, work: str) -> str | None:
        """WORKDIR creates its directory when the image lacks it (as a tiny layer)."""
        path = stage.config.get("WorkingDir") or "/"
        view = ImageView(stage.image.layer_dirs() if stage.image else [])
        inside = view.resolve(path)  # through the image's links, inside the image
        if path == "/" or view.lstat(inside) is not None:
            return None
        staging = os.path.join(work, "upper")
        os.makedirs(staging, exist_ok=True)
        with safepath.Root(staging, follow_links=False) as layer:
            self._make_parents(view, layer, inside + "/")
        return staging

    # --- RUN ---------------------------------------------------------------------------------------------------

    def _run(self, stage: _Stage, ins: Instruction) -> Iterator[dict]:
        argv = dockerfile.command_args(ins, stage.config)
        used_args = sorted((k, v) for k, v in stage.args.items() if k not in dockerfile.env_dict(stage.config))
        prefix = f'|{len(used_args)} {" ".join("{}={}".format(*kv) for kv in used_args)} ' if used_args else ""
        created_by = prefix + " ".join(argv)
        key = self._cache_key(stage, created_by)
        if (yield from self._from_cache(stage, key, created_by)):
            return
        if self.runner is None:
            raise InvalidParameter("RUN needs the container engine, which this builder was not given")
        if stage.image is None:
            raise InvalidParameter("RUN is not possible on a scratch image without files")
        config = dict(stage.config)
        config["Env"] = list(config.get("Env") or []) + ["{}={}".format(*kv) for kv in used_args] + [
            f"{key}={value}" for key, value in sorted(self.build_args.items())  # proxies: outside the cache key
            if key in PROXY_ARGS and value is not None and key not in stage.args]
        step = self.runner.run_build_step(stage.image.id, argv, config)
        try:
            yield _stream(f" ---> Running in {str(step.id)[:12]}\n")
            for chunk in step.output():
                if not self.quiet:
                    yield _stream(chunk.decode("utf-8", "replace"))
            code = step.wait()
            if code != 0:
                raise BuildFailed(f'The command \'{" ".join(argv)}\' returned a non-zero code: {code}', code)
            stage.image = self.store.commit(step.upper_dir, stage.image, dict(stage.config), created_by=created_by)
            self._cache_record(key, stage.image)
        finally:
            step.remove()
        yield _stream(f"Removing intermediate container {str(step.id)[:12]}\n")

    # --- COPY / ADD ----------------------------------------------------------------------------------------------

    def _copy(self, stage: _Stage, ins: Instruction) -> Iterator[dict]:
        with self.store.workdir() as work:
            yield from self._copy_into(stage, ins, work)

    def _copy_into(self, stage: _Stage, ins: Instruction, work: str) -> Iterator[dict]:
        """Stage the files under ``work`` as an upper dir, then commit (or reuse) the layer."""
        env = self._env(stage)
        args = list(ins.args) if ins.json_form else dockerfile.words(ins.args[0], env)
        if len(args) < 2:
            raise InvalidParameter(f"{ins.cmd} requires at least two arguments, but only one was provided. Destination "
                                   "could not be determined.")
        sources, dest = args[:-1], args[-1]
        if "from" in ins.flags:
            other = self._stage_by_name(dockerfile.expand(ins.flags["from"], env))
            if other is not None:
                image = other.image
            else:
                image = yield from self._base_image(dockerfile.expand(ins.flags["from"], env))
            source_view = ImageView(image.layer_dirs() if image else [])
        else:
            source_view = ImageView([self.context])
        in_context = "from" not in ins.flags
        owner = self._owner(stage, ins.flags.get("chown"))
        mode = int(ins.flags["chmod"], 8) if "chmod" in ins.flags else None
        workdir = stage.config.get("WorkingDir") or "/"
        dest_path = posixpath.normpath(posixpath.join(workdir, dest))
        dest_is_dir = dest.endswith("/") or len(sources) > 1 or dest in (".", "./")
        parent_view = ImageView(stage.image.layer_dirs() if stage.image else [])
        # The destination's links are followed inside the image (``/app -> /srv`` puts files in /srv, as Docker)
        inside = parent_view.resolve(dest_path)
        existing = parent_view.lstat(inside)
        if existing is not None and stat.S_ISDIR(existing.st.st_mode):
            dest_is_dir = True  # COPY a.txt /app, where /app is a directory of the image
        plan: list[tuple[str, Found, str]] = []  # (kind, source entry, target path inside the layer)
        for src in sources:
            if ins.cmd == "ADD" and re.match(r"^[a-z]+://", src):
                raise NotFound(f"ADD from a URL is not supported by this builder: {src}")
            matches = self._glob(src, source_view, in_context)
            if not matches:
                raise NotFound("COPY failed: file not found in build context or excluded by .dockerignore: "
                               f"stat {src}: file does not exist")
            if len(matches) > 1:
                dest_is_dir = True
            for found, rel in matches:
                target = inside
                if stat.S_ISDIR(found.st.st_mode):
                    plan.extend(_plan_tree(source_view, found, target))
                elif ins.cmd == "ADD" and in_context and _is_tar(found):
                    plan.append(("tar", found, target))
                else:
                    if dest_is_dir:
                        target = posixpath.join(target, posixpath.basename(rel))
                    plan.append(("file", found, target))
        digest = _plan_digest(plan, owner, mode)
        created_by = f"{NOP}{ins.cmd} {'multi' if len(sources) > 1 else 'file'}:{digest} in {dest_path} "
        staging = os.path.join(work, "upper")

        def materialize() -> str:
            """Writes go through a Root that refuses links: an entry copied earlier (a symlink ``x``) is replaced
            by a later directory ``x``, as tar extraction does, never written through."""
            os.makedirs(staging, exist_ok=True)
            with safepath.Root(staging, follow_links=False) as layer:
                self._make_parents(parent_view, layer, inside + ("/" if dest_is_dir else ""))
                for kind, found, target in plan:
                    if kind == "tar":
                        folder = layer.makedirs(target, replace=True)
                        try:
                            with found.open() as f:
                                archive.extract_tree(f, f"/proc/self/fd/{folder}")
                        finally:
                            os.close(folder)
                    elif kind == "dir":
                        _copy_dir(found, layer, target, owner)
                    else:
                        _copy_file(found, layer, target, owner, mode)
            return staging

        yield from self._cached_or_commit(stage, materialize, created_by)

    @staticmethod
    def _glob(src: str, view: ImageView, in_context: bool) -> list[tuple[Found, str]]:
        """(entry, path as named) pairs for a source, its links followed inside the view (the context or stage)."""
        if in_context and (posixpath.normpath(src).startswith("../") or posixpath.normpath(src) == ".."):
            raise InvalidParameter(f"forbidden path outside the build context: {src} ()")
        clean = posixpath.normpath("/" + src).lstrip("/")
        if any(c in clean for c in "*?["):
            rels = [r for r in view.walk() if fnmatch.fnmatchcase(r, clean) and r.count("/") == clean.count("/")]
        else:
            rels = [clean]
        out = []
        for rel in rels:
            found = view.lstat(view.resolve(rel))
            if found is not None:
                out.append((found, rel))
        return out

    @staticmethod
    def _make_parents(view: ImageView, layer: safepath.Root, rel: str) -> None:
        """Create the destination's parent dirs with the mode/owner they have in the image (not 0755 root)."""
        parts = safepath.split(rel)
        if not rel.endswith("/"):
            parts = parts[:-1]
        for n in range(1, len(parts) + 1):
            path = "/".join(parts[:n])
            try:
                if stat.S_ISDIR(layer.lstat(path).st_mode):
                    continue
            except FileNotFoundError:
                pass
            os.close(layer.makedirs(path, 0o755, replace=True))
            found = view.lstat(path)
            if found is not None and stat.S_ISDIR(found.st.st_mode):
                parent, name = layer.open_parent(path)
                try:
                    safepath.set_attrs(parent, name, found.st)
                finally:
                    os.close(parent)

    def _owner(self, stage: _Stage, spec: str | None) -> tuple[int, int]:
        """``--chown=user[:group]`` with numeric IDs or names from the image's /etc/passwd and /etc/group."""
        if not spec:
            return 0, 0
        user, _, group = spec.partition(":")
        view = ImageView(stage.image.layer_dirs() if stage.image else [])
        uid, default_gid = self._lookup_id(view, "etc/passwd", user)
        gid = self._lookup_id(view, "etc/group", group)[0] if group else default_gid
        return uid, gid

    @staticmethod
    def _lookup_id(view: ImageView, table: str, name: str) -> tuple[int, int]:
        if name.isdigit():
            return int(name), int(name)
        found = view.lstat(view.resolve(table))
        if found is not None and stat.S_ISREG(found.st.st_mode):
            with io.TextIOWrapper(found.open(), encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.strip().split(":")
                    if fields and fields[0] == name and len(fields) > 3:
                        return int(fields[2]), int(fields[3] if table == "etc/passwd" else fields[2])
        raise InvalidParameter(f"unable to find user {name}: no matching entries in {table.split('/')[1]} file")


def _continues(source: Image, source_history: list[dict], history: list[dict], diff_ids: list[str]) -> bool:
    """dockerd's ``isValidParent``: the source's history and layers begin with the parent's, and go further."""
    if not source_history:
        return False
    if not history and not diff_ids:
        return True
    if len(history) >= len(source_history) or len(diff_ids) > len(source.diff_ids):
        return False
    return source_history[:len(history)] == history and source.diff_ids[:len(diff_ids)] == diff_ids


def _plan_tree(view: ImageView, found: Found, target: str) -> Iterator[tuple[str, Found, str]]:
    """A directory's contents as plan entries (a context dir, or a merged dir of another stage's image)."""
    yield "dir", found, target
    for name in view.listdir(found.rel):
        child = view.lstat(posixpath.join(found.rel, name))
        if child is None:
            continue
        if stat.S_ISDIR(child.st.st_mode):
            yield from _plan_tree(view, child, posixpath.join(target, name))
        else:
            yield "file", child, posixpath.join(target, name)


def _plan_digest(plan: list[tuple[str, Found, str]], owner: tuple[int, int], mode: int | None) -> str:
    """Content digest of a COPY/ADD: targets, modes, link targets and bytes (not times), as the cache key."""
    digest = hashlib.sha256(json.dumps([owner, mode]).encode())
    for kind, found, target in plan:
        st = found.st
        digest.update((f"{kind}\0{target}\0{stat.S_IMODE(st.st_mode):o}\0").encode())
        if stat.S_ISLNK(st.st_mode):
            digest.update(found.layer.readlink(found.rel).encode())
        elif stat.S_ISREG(st.st_mode):
            with found.open() as f:
                for chunk in iter(lambda: f.read(archive.COPY_CHUNK), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def _copy_dir(src: Found, layer: safepath.Root, target: str, owner: tuple[int, int]) -> None:
    """A source directory's own mode and the --chown owner, given only to a directory this step creates."""
    try:
        if stat.S_ISDIR(layer.lstat(target).st_mode):
            return
    except FileNotFoundError:
        pass
    folder = layer.makedirs(target, replace=True)
    try:
        os.fchmod(folder, stat.S_IMODE(src.st.st_mode))
        os.fchown(folder, *owner)
    finally:
        os.close(folder)


def _copy_file(src: Found, layer: safepath.Root, target: str, owner: tuple[int, int], mode: int | None) -> None:
    """Copy one file or symlink (times kept, owner from --chown, mode from --chmod); skip special files."""
    if not (stat.S_ISLNK(src.st.st_mode) or stat.S_ISREG(src.st.st_mode)):
        return  # fifos, sockets and devices are not copied
    folder = layer.makedirs(posixpath.dirname(target), replace=True)
    source, source_name = src.layer.open_parent(src.rel)
    name = posixpath.basename(target)
    try:
        st = safepath.copy_file_at(source, source_name, folder, name)
        safepath.set_attrs(folder, name, st, *owner, mode=mode)
    finally:
        os.close(source)
        os.close(folder)


def _is_tar(found: Found) -> bool:
    """ADD unpacks local archives (plain or compressed tars) instead of copying them."""
    if not stat.S_ISREG(found.st.st_mode):
        return False
    try:
        with found.open() as f:
            head = f.read(512)
    except OSError:
        return False
    if archive.detect_compression(head) != "none":
        return True
    return len(head) == 512 and head[257:262] == b"ustar"


class EngineStepRunner:
    """The StepRunner protocol over the Engine's public API (create, start, logs, wait, upper dir, remove).

    ``host_config`` is what the build request says about RUN containers, as dockerd's ``hostConfigFromOptions``:
    NetworkMode, ExtraHosts, ShmSize, Ulimits."""

    def __init__(self, engine: Any, host_config: dict | None = None) -> None:
        self.engine = engine
        self.host_config = dict(host_config or {})
        self.host_config["NetworkMode"] = self.host_config.get("NetworkMode") or "default"

    def run_build_step(self, image_id: str, argv: list[str], config: dict) -> _EngineStep:
        body = {"Image": image_id, "Entrypoint": argv, "Cmd": None, "Env": config.get("Env") or [],
                "WorkingDir": config.get("WorkingDir") or "", "User": config.get("User") or "",
                "AttachStdout": True, "AttachStderr": True, "HostConfig": dict(self.host_config)}
        return _EngineStep(self.engine, self.engine.create_container(body)["Id"])


class _EngineStep:
    def __init__(self, engine: Any, container_id: str) -> None:
        self.engine = engine
        self.id = container_id

    def output(self) -> Iterator[bytes]:
        self.engine.start(self.id)
        for _stream, data in self.engine.logs(self.id, follow=True, stdout=True, stderr=True):
            yield data

    def wait(self) -> int:
        return int(self.engine.wait(self.id).get("StatusCode", 1))

    @property
    def upper_dir(self) -> str:
        return self.engine.container_upper_dir(self.id)

    def remove(self) -> None:
        self.engine.remove(self.id, force=True, volumes=True)


def _query_value(query: dict[str, list[str]], name: str, default: str = "") -> str:
    """The first value, as Go's ``Request.FormValue`` (docker-py sends ``dockerfile`` twice for a Dockerfile from
    outside the context: its generated name, then its text)."""
    values = query.get(name) or []
    return values[0] if values else default


def _query_bool(query: dict[str, list[str]], name: str) -> bool:
    return _query_value(query, name).strip().lower() not in ("", "0", "no", "false", "none")


def _query_json(query: dict[str, list[str]], name: str, kind: type = dict, what: str = "") -> Any:
    """A JSON query value (``buildargs``, ``cachefrom``...); a bad one is refused as dockerd refuses it."""
    text = _query_value(query, name)
    if not text:
        return kind()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested absurdly deep, still the client's error
        raise InvalidParameter(f"{what}{exc}") from None
    if not isinstance(value, kind):
        raise InvalidParameter(f"{what}json: cannot unmarshal {type(value).__name__} into Go value")
    return value


def _query_int(query: dict[str, list[str]], name: str) -> int:
    value = _query_value(query, name)
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        raise InvalidParameter(f'strconv.ParseInt: parsing "{value}": invalid syntax') from None


_RUN_NUMBERS = (("shmsize", "ShmSize"), ("memory", "Memory"), ("memswap", "MemorySwap"), ("cpushares", "CpuShares"),
                ("cpuperiod", "CpuPeriod"), ("cpuquota", "CpuQuota"))
_RUN_TEXTS = (("cpusetcpus", "CpusetCpus"), ("cpusetmems", "CpusetMems"), ("cgroupparent", "CgroupParent"))


def run_host_config(query: dict[str, list[str]]) -> dict:
    """The RUN containers' HostConfig, as dockerd's ``hostConfigFromOptions``: ``networkmode``, ``extrahosts``,
    ``shmsize``, ``ulimits`` and the resource limits (``memory``, ``memswap``, ``cpushares``, ``cpuperiod``,
    ``cpuquota``, ``cpusetcpus``, ``cpusetmems``, ``cgroupparent``)."""
    host: dict = {"NetworkMode": _query_value(query, "networkmode") or "default"}
    if query.get("extrahosts"):
        host["ExtraHosts"] = [item for value in query["extrahosts"] for item in value.split(",") if item]
    for name, key in _RUN_NUMBERS:
        number = _query_int(query, name)
        if number:
            host[key] = number
    for name, key in _RUN_TEXTS:
        if _query_value(query, name):
            host[key] = _query_value(query, name)
    ulimits = _query_json(query, "ulimits", list, "error reading ulimit settings: ")
    if ulimits:
        host["Ulimits"] = ulimits
    return host


def build_request(store: ImageStore, engine: Any, body: IO[bytes], query: dict[str, list[str]],
                  pull: PullFn | None, admit: Callable[[str, Image], None] | None = None) -> Iterator[dict]:
    """``POST /build`` from its query (dockerfile, t, buildargs, labels, target, nocache, q, cachefrom, networkmode,
    extrahosts, shmsize, ulimits, remote); RUN steps go to ``engine``, missing base images come from ``pull``.

    A bad query is an HTTP error, as with dockerd; from the context on, every failure is the stream's last
    message (``error``/``errorDetail``)."""
    if _query_value(query, "remote"):
        raise InvalidParameter("building from a remote context is not supported: send the context as a tar")
    builder = Builder(store, body, dockerfile_path=_query_value(query, "dockerfile", "Dockerfile"),
                      tags=query.get("t") or [], build_args=_query_json(query, "buildargs"),
                      labels=_query_json(query, "labels"), target=_query_value(query, "target") or None,
                      nocache=_query_bool(query, "nocache"), quiet=_query_bool(query, "q"),
                      cache_from=_query_json(query, "cachefrom", list), pull=pull, admit=admit,
                      runner=EngineStepRunner(engine, run_host_config(query)))
    try:
        builder.receive_context()
    except (EngineError, OSError) as exc:
        return iter([_error(exc)])
    return builder.run()


def build(store: ImageStore, context: IO[bytes], **options: Any) -> Iterator[dict]:
    """``POST /build``: see Builder for the options (dockerfile_path, tags, build_args, labels, target, nocache,
    runner, pull, quiet). Yields ``{"stream"}``, ``{"status"}``, ``{"aux": {"ID"}}`` and, on failure,
    ``{"errorDetail", "error"}`` as the last message."""
    return Builder(store, context, **options).run()


__all__ = ["BuildFailed", "Builder", "EngineStepRunner", "ImageView", "build", "build_request"]
