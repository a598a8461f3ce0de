"""``--debug`` shows what the SDKs send, never a credential, token, user data or key in it (issue 11 item 7).

The test runs a real command with ``--debug`` against the fake Resource Manager and looks for the secrets in everything it printed. The
SDK's debug lines are there (the test would see a leak), with ``REDACTED`` in place of each secret. The filter's own
cases are in ``tests/security/test_debug_redaction.py``.
"""

from __future__ import annotations

from pathlib import Path

from tests.azure.conftest import arm_config
from tests.azure.fakearm import FakeArm
from tests.support.cli import create_flags, machines


def test_azure_debug_hides_the_client_secret(arm: FakeArm, tmp_path: Path) -> None:
    secret = "wrong-but-still-a-secret-value"  # sent in the token request's body; the login then fails
    result = machines(tmp_path / "store", "--debug", "create", "-d", "azure",
                      *create_flags("azure", {**arm_config(arm), "client_secret": secret}), "bad", check=False)
    assert result.returncode == 3 and "Azure login failed" in result.stderr
    assert "POST /" in result.stderr and "/oauth2/v2.0/token" in result.stderr  # the request was made and logged
    assert secret not in result.stderr
