"""``--debug`` shows what the SDKs send, never a credential, token, user data or key in it (issue 11 item 7).

The test runs a real command with ``--debug`` against moto and looks for the secrets in everything it printed. The
SDK's debug lines are there (the test would see a leak), with ``REDACTED`` in place of each secret. The filter's own
cases are in ``tests/security/test_debug_redaction.py``.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from tests.aws.conftest import World
from tests.support.cli import machines

SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLE-session-token-that-must-stay-local"
USER_SECRET = "hunter2-user-data-secret"


@pytest.mark.timeout(600)
def test_aws_debug_hides_token_secret_key_and_user_data(world: World, tmp_path: Path, aws_env: dict[str, str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    store, name = tmp_path / "store", f"dbg-{os.getpid()}"
    script = tmp_path / "extra.sh"
    script.write_text(f"#!/bin/sh\nexport PASSWORD={USER_SECRET}\n")

    created = machines(store, "--debug", "create", "--driver", "aws", "--no-provision", "--aws-userdata", str(script),
                       *world.flags(), name)
    instance = created.stderr  # the whole debug log of the create
    removed = machines(store, "--debug", "rm", "-y", name)

    log = instance + removed.stderr
    assert "RunInstances" in log and "botocore" in log and "'X-Amz-Security-Token': b'REDACTED'" in log
    assert "'Authorization': b'REDACTED'" in log and "'UserData': 'REDACTED'" in log
    for secret in (SESSION_TOKEN, aws_env["AWS_SECRET_ACCESS_KEY"], USER_SECRET,
                   base64.b64encode(USER_SECRET.encode()).decode()[:16]):
        assert secret not in log
    assert "PRIVATE KEY-----\\n" not in log and "PRIVATE KEY-----\n" not in log
