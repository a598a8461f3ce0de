"""``machines create --driver azure`` refusing bad input: one line, exit 3, nothing made (the happy path is in test_e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest

from machines.machine import Machines
from tests.support.cli import create_flags, machines

from .conftest import arm_config
from .fakearm import FakeArm

BAD_INPUT = {
    "missing subscription": ({"subscription_id": None}, "--azure-subscription-id is required (or set AZURE_SUBSCRIPTION_ID)"),
    "unknown location": ({"location": "marsnorth"}, "unknown Azure location 'marsnorth'"),
    "wrong secret": ({"client_secret": "wrong"}, "Azure login failed"),
}


@pytest.mark.parametrize(("change", "message"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_one_line_before_anything_is_made(arm: FakeArm, tmp_path: Path, change: dict, message: str) -> None:
    store = tmp_path / "store"
    result = machines(store, "create", "-d", "azure", *create_flags("azure", {**arm_config(arm), **change}), "bad", check=False)
    assert result.returncode == 3, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "wrong" not in result.stderr and arm.client_secret not in result.stderr
    assert arm.ids() == [] and Machines(store).store.names() == []
