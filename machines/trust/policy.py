"""``--engine-trust-policy``: read a containers-policy.json on the workstation and make it self-contained.

``keyPath``/``keyPaths`` name files on the workstation, which the host does not have: their contents are inlined as
``keyData`` (what containers/image accepts too) before the policy is stored with the machine and installed at
``<data root>/policy.json``. The result is checked with the runtime's own parser, so a policy the runtime would
refuse is refused at create time.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from machines.errors import UsageError
from machines.runtime.errors import EngineError
from machines.runtime.images import trust


def load_policy(path: str) -> str:
    """The policy file's JSON with keys inlined; UsageError naming the problem otherwise."""
    source = Path(path).expanduser()
    try:
        doc = json.loads(source.read_text())
    except OSError as exc:
        raise UsageError(f"--engine-trust-policy: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"--engine-trust-policy: {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"--engine-trust-policy: {path} is not a policy object")
    scopes = [doc.get("default")] + [reqs for transport in (doc.get("transports") or {}).values()
                                      if isinstance(transport, dict) for reqs in transport.values()]
    for reqs in scopes:
        for req in reqs if isinstance(reqs, list) else []:
            if isinstance(req, dict) and ("keyPath" in req or "keyPaths" in req):
                paths = req.pop("keyPaths", None) or [req.pop("keyPath")]
                if len(paths) != 1:
                    raise UsageError("--engine-trust-policy: keyPaths with several keys is not supported; "
                                     "use one requirement per key")
                key_file = source.parent / Path(paths[0]).expanduser()
                try:
                    req["keyData"] = base64.b64encode(key_file.read_bytes()).decode()
                except OSError as exc:
                    raise UsageError(f"--engine-trust-policy: cannot read key {key_file}: {exc.strerror}") from None
    text = json.dumps(doc, indent=2) + "\n"
    try:
        trust.Policy(text.encode())
    except EngineError as exc:
        raise UsageError(f"--engine-trust-policy: {exc}") from None
    return text
