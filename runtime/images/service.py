"""The image service: what the API and the engine ask of images beyond the store's own bookkeeping.

As moby's image service sits over its layer store, this sits over the image store, the registry client and the
builder: pull, push, login and distribution inspect go to registries, build runs the classic builder, save and
load read and write image archives. The store below knows nothing of them, so the modules form a tree::

    service -> builder, registry, transfer, signing -> trust, scan -> store -> archive, dockerfile, media, reference
    (the builder also uses ignore; media, reference and ignore import no other images module)

Only the store is imported with this module: the daemon builds the service at start, and the registry client (with
``http.client``), the builder, trust, signing and the scanner load with the first operation that needs them, so
that the daemon serves sooner and a host that never pulls never pays for them.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any, Callable, TypeVar, Union

from machines.runtime.images.reference import join_repo_tag
from machines.runtime.images.reference import parse as parse_reference
from machines.runtime.images.store import Image, ImageStore
from machines.runtime.proxy import ProxyConfig

if TYPE_CHECKING:
    from machines.runtime.images import registry, transfer
    from machines.runtime.images.scan.arrival import ArrivalScanner
    from machines.runtime.images.signing import Signing
    from machines.runtime.images.trust import Trust

T = TypeVar("T")

Auth = Union[dict, str, None]  # a credentials dict or the raw ``X-Registry-Auth`` header
_making = threading.Lock()


def _made_once(make: Callable[[ImageService], T]) -> T:
    """A read-only attribute made by ``make`` on first use and kept: one instance even when two requests ask first
    at once (``functools.cached_property`` locks no more since Python 3.12)."""
    name = make.__name__

    def get(service: ImageService) -> T:
        made = service.__dict__.get(name)
        if made is None:
            with _making:
                made = service.__dict__.get(name)
                if made is None:
                    made = service.__dict__[name] = make(service)
        return made

    return property(get, doc=make.__doc__)  # type: ignore[return-value]


class ImageService:
    """Image operations that reach outside the store (registries, builds, archives)."""

    def __init__(self, store: ImageStore, *, insecure_registries: Sequence[str] = (),
                 certs_dirs: Sequence[str] | None = None, mirrors: Sequence[str] = (),
                 proxies: ProxyConfig | None = None) -> None:
        """``mirrors``: tried before Docker Hub; ``proxies``: the daemon's HTTP(S)_PROXY/NO_PROXY."""
        self.store = store
        self.insecure_registries = list(insecure_registries)
        self.mirrors = list(mirrors)
        self.proxies = proxies or ProxyConfig()
        self.certs_dirs = list(certs_dirs) if certs_dirs is not None else [
            os.path.join(os.path.dirname(store.root), "certs.d"), "/etc/docker/certs.d"]

    @_made_once
    def trust(self) -> Trust:
        """The trust policy's checks of pulls and runs (policy.json)."""
        from machines.runtime.images.trust import Trust
        return Trust(os.path.dirname(self.store.root))

    @_made_once
    def signing(self) -> Signing:
        """Signs pushes, when signing.json says so."""
        from machines.runtime.images.signing import Signing
        return Signing(os.path.dirname(self.store.root))

    @_made_once
    def arrival(self) -> ArrivalScanner:
        """Scans images on arrival, when scan.json says so."""
        from machines.runtime.images.scan.arrival import ArrivalScanner
        return ArrivalScanner(os.path.dirname(self.store.root))

    def registry_options(self) -> registry.RegistryOptions:
        """Read afresh for every operation, so a CA added to certs.d counts from the next pull on."""
        from machines.runtime.images import registry
        return registry.RegistryOptions(self.insecure_registries, self.certs_dirs, mirrors=self.mirrors,
                                        proxies=self.proxies)

    def pull(self, image: str, tag: str | None = None, auth: Auth = None,
             platform: str | None = None) -> Iterator[dict]:
        """``docker pull``: Docker's JSON progress messages; raises EngineError (see registry.pull)."""
        from machines.runtime.images import registry
        stream = registry.pull(self.store, image, tag, registry.as_auth(auth), platform, self.registry_options(),
                               check=self._check_pull)
        if self.arrival.settings() is None:
            return stream
        return self._scan_pulled(stream, str(join_repo_tag(image, tag)))

    def _scan_pulled(self, stream: Iterator[dict], name: str) -> Iterator[dict]:
        """The pull's messages, then the arrival scan; a refused image is removed again and the error raised."""
        from machines.runtime.images.scan.arrival import ScanRefused
        yield from stream
        try:
            self.arrival.check(name, self.store.resolve(name))
        except ScanRefused:
            self.store.remove(name, force=True)
            raise

    def _check_pull(self, session: registry.Session, digest: str) -> None:
        """The trust policy's verdict on the manifest a pull resolved, asked before any layer is fetched."""
        self.trust.check_pull(session, digest)

    def admit(self, name: str, image: Image) -> None:
        """Raise trust.Rejected when the policy does not let ``image`` run (or serve as a base image)."""
        self.trust.check_run(name, image.repo_digests)

    def push(self, image: str, tag: str | None = None, auth: Auth = None) -> Iterator[dict]:
        """``docker push``: Docker's push messages ending with aux ``{Tag, Digest, Size}``, each pushed tag signed
        after it when the signing policy covers the repository."""
        from machines.runtime.images import registry
        credentials, options = registry.as_auth(auth), self.registry_options()
        stream = registry.push(self.store, image, tag, credentials, options)
        return self.signing.signed_push(parse_reference(image, default_tag=False), stream,
                                        lambda ref: registry.Session(ref, credentials, options, "pull,push"))

    def login(self, auth: dict) -> dict:
        """``POST /auth``: ``{"Status": "Login Succeeded", "IdentityToken": ""}`` or Unauthorized."""
        from machines.runtime.images import registry
        return registry.login(auth, self.registry_options())

    def inspect_distribution(self, name: str, auth: Auth = None) -> dict:
        """``GET /distribution/{name}/json``: descriptor and platforms, asked of the registry."""
        from machines.runtime.images import registry
        return registry.inspect_distribution(name, registry.as_auth(auth), self.registry_options())

    def build(self, engine: Any, body: IO[bytes], query: dict[str, list[str]],
              registry_config: str | None = None) -> Iterator[dict]:
        """``POST /build`` (classic builder): the JSON stream, errors in-band; RUN steps run on ``engine``;
        base images missing here are pulled with the credentials of ``X-Registry-Config``."""
        from machines.runtime.images import builder, registry
        credentials = registry.decode_auth(registry_config)

        def pull(name: str) -> Iterator[dict]:
            return self.pull(name, auth=registry.auth_for_host(credentials, parse_reference(name).domain))

        stream = builder.build_request(self.store, engine, body, self._with_proxy_args(query), pull, self.admit)
        return stream if self.arrival.settings() is None else self._scan_built(stream)

    def _scan_built(self, stream: Iterator[dict]) -> Iterator[dict]:
        """The build's stream with the messages after the image ID held back until the arrival scan passed; a
        refused image is removed and the refusal is the stream's last message, as build errors are."""
        from machines.runtime.images.scan.arrival import ScanRefused
        built: str | None = None
        held: list[dict] = []
        for message in stream:
            aux = message.get("aux")
            if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
                built = aux["ID"]
            if built is None:
                yield message
            else:
                held.append(message)
        if built is not None and not any("error" in message for message in held):
            try:
                self.arrival.check(built, self.store.resolve(built))
            except ScanRefused as exc:
                self.store.remove(built, force=True)
                yield {"errorDetail": {"message": str(exc)}, "error": str(exc)}
                return
        yield from held

    def _with_proxy_args(self, query: dict[str, list[str]]) -> dict[str, list[str]]:
        """The daemon's proxies as default ``--build-arg``s (the client's own values win), as Docker's clients add
        them from their proxy settings; a malformed ``buildargs`` is left for the builder to refuse."""
        defaults = self.proxies.build_args()
        try:
            given = json.loads((query.get("buildargs") or ["{}"])[-1] or "{}")
        except (ValueError, RecursionError):  # deep nesting too: the builder refuses it as the client's error
            return query
        if not defaults or not isinstance(given, dict):
            return query
        return {**query, "buildargs": [json.dumps({**defaults, **given})]}

    def save(self, refs: Sequence[str]) -> Iterator[bytes]:
        """``docker save``: one tar that both old (manifest.json) and new (OCI index.json) loaders read."""
        from machines.runtime.images import transfer
        return transfer.save(self.store, refs)

    def load(self, fileobj: IO[bytes], progress: transfer.ProgressFn | None = None) -> list[str]:
        """``docker load``: familiar tags loaded, or image IDs for untagged images."""
        from machines.runtime.images import transfer
        return transfer.load(self.store, fileobj, progress)
