"""The router's fixed-path lookup (issue 18: the per-request cost) keeps moby's first-registered-wins order."""

from __future__ import annotations

from machines.runtime.api.routing import ROUTER
from machines.runtime.api.server import Router


def test_fixed_paths_and_patterns_keep_registration_order() -> None:
    router = Router()
    router.add("GET", "/things/{name:.*}", "any thing")(lambda *a: "pattern")
    router.add("GET", "/things/special", "shadowed by the pattern above")(lambda *a: "fixed")
    router.add("GET", "/other/json", "fixed")(lambda *a: "other-fixed")
    router.add("GET", "/other/{id}", "after the fixed one")(lambda *a: "other-pattern")
    route, params = router.match("GET", "/things/special")
    assert route.summary == "any thing" and params == {"name": "special"}
    route, params = router.match("GET", "/other/json")
    assert route.summary == "fixed" and params == {}
    route, params = router.match("GET", "/other/a%2Fb")
    assert route.summary == "after the fixed one" and params == {"id": "a/b"}
    assert router.match("POST", "/other/json") is None and router.match("GET", "/nothing") is None


def test_every_registered_route_is_found_as_a_linear_scan_would_find_it() -> None:
    for route in ROUTER.routes:
        path = route.pattern.replace("{name:.*}", "a/b").replace("{", "").replace("}", "")
        first = next(r for r in ROUTER.routes if r.method == route.method and r.regex.match(path))
        found = ROUTER.match(route.method, path)
        assert found is not None and found[0] is first, route.pattern
