"""The OpenAPI description of what this daemon serves, generated from the route table so it cannot drift.

``python -m machines.runtime.api.openapi > runtime/api/openapi.json`` refreshes the committed copy; a test checks it is
current. Request and response bodies follow Docker's Engine API (moby api/swagger.yaml, v1.47).
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from machines.runtime import API_VERSION, VERSION
from machines.runtime.api import build_app  # noqa: F401 - imports every area module, filling the table
from machines.runtime.api.routing import ROUTER

_STATUS = {"POST /containers/create": "201", "POST /containers/{ref}/exec": "201", "POST /images/{name}/tag": "201",
           "POST /networks/create": "201", "POST /volumes/create": "201"}


def describe() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for item in ROUTER.routes:
        if item.handler.__module__.endswith(".unsupported"):
            continue  # listed in the description instead
        path = re.sub(r"\{(\w+):\.\*\}", r"{\1}", item.pattern)
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in re.findall(r"\{(\w+)\}", path)]
        method = item.method.lower()
        status = _STATUS.get(f"{item.method} {path}", "200")
        operation: dict[str, Any] = {
            "summary": item.summary,
            "responses": {status: {"description": "success"},
                          "default": {"description": "error: {\"message\": ...} with Docker's wording"}},
        }
        if parameters:
            operation["parameters"] = parameters
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "machines runtime: Docker Engine API subset", "version": VERSION,
                 "description": f"Served at /vX.Y/... (1.24 to {API_VERSION}) and unversioned. Shapes follow Docker's "
                                f"Engine API {API_VERSION}. Swarm paths (/swarm, /nodes, /services, /tasks, "
                                "/secrets, /configs) answer 503 and /plugins 404."},
        "paths": paths,
    }


def render() -> str:
    return json.dumps(describe(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
