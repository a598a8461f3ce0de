"""Fleet commands: ``--filter`` selects machines as ``ls`` does; the command runs on all of them at once and prints
one line per machine with its result; one failure does not stop the others, and the exit status says whether all
succeeded. Bare SSH hosts (``--no-provision``) are enough to show it."""

from __future__ import annotations

from tests.swarm.conftest import Fleet


def _states(fleet: Fleet) -> dict[str, str]:
    return dict(line.split() for line in fleet("ls", "--format", "{name} {state}").stdout.splitlines())


def test_fleet_commands_act_on_what_the_filter_selects(fleet: Fleet) -> None:
    web1, web2, db = fleet.name("fw1"), fleet.name("fw2"), fleet.name("fdb")
    fleet("create", "--no-provision", "--engine-label", "tier=web", web1, web2)
    fleet("create", "--no-provision", "--engine-label", "tier=db", db)
    try:
        # One machine's command fails: the others still run, each gets its result line, the exit status says so.
        result = fleet("ssh", "--filter", "label=tier=web", "--", f"hostname; test $(hostname) = {web1}", check=False)
        assert result.returncode == 1
        lines = result.stdout.splitlines()
        assert f"{web1}: {web1}" in lines and f"{web2}: {web2}" in lines
        assert f"{web1}: ok" in lines and f"{web2}: error: exit status 1" in lines
        assert db not in result.stdout

        stopped = fleet("stop", "--filter", "label=tier=web")
        assert sorted(stopped.stdout.splitlines()) == sorted([f"{web1}: ok", f"{web2}: ok"])
        assert _states(fleet) == {web1: "Stopped", web2: "Stopped", db: "Running"}
        started = fleet("start", "--filter", "state=Stopped", "--filter", f"name=^{web1}$")
        assert started.stdout == f"{web1}: ok\n"
        assert _states(fleet)[web1] == "Running" and _states(fleet)[web2] == "Stopped"

        # ssh on a stopped machine fails for it alone.
        mixed = fleet("ssh", "--filter", "label=tier=web", "--", "true", check=False)
        assert mixed.returncode != 0 and f"{web1}: ok" in mixed.stdout and f"{web2}: error:" in mixed.stdout

        assert fleet("kill", "--filter", "label=tier=nothing").stdout == ""  # nothing selected: nothing done
        both = fleet("stop", "--filter", "state=Running", web1, check=False)
        assert both.returncode == 2 and "not both" in both.stderr
        bad = fleet("stop", "--filter", "colour=blue", check=False)
        assert bad.returncode == 2 and "bad filter" in bad.stderr
    finally:
        removed = fleet("rm", "-y", "--filter", f"name={fleet.tag}$", check=False)
    assert sorted(removed.stdout.splitlines()) == sorted(f"{name}: ok" for name in (web1, web2, db))
    assert fleet("ls", "-q").stdout == ""
