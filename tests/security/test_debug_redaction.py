"""``--debug`` shows what the SDKs send, never a credential, token, user data or key in it.

Each test runs a real command with ``--debug`` against the fake clouds (moto for AWS, the fake ARM for Azure) and
looks for the secrets in everything it printed. The SDKs' debug lines are there (the test would see a leak), with
``REDACTED`` in place of each secret.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

import pytest

from machines import redaction
from tests.aws.conftest import REGION, World, aws_env, cloud, consistency, moto_endpoint, world  # noqa: F401
from tests.azure.conftest import arm, arm_config, fake_arm  # noqa: F401
from tests.azure.fakearm import FakeArm
from tests.support.cli import create_flags, machines

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


def test_azure_debug_hides_the_client_secret(arm: FakeArm, tmp_path: Path) -> None:
    secret = "wrong-but-still-a-secret-value"  # sent in the token request's body; the login then fails
    result = machines(tmp_path / "store", "--debug", "create", "-d", "azure",
                      *create_flags("azure", {**arm_config(arm), "client_secret": secret}), "bad", check=False)
    assert result.returncode == 3 and "Azure login failed" in result.stderr
    assert "POST /" in result.stderr and "/oauth2/v2.0/token" in result.stderr  # the request was made and logged
    assert secret not in result.stderr


@pytest.mark.parametrize("line", [
    "headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=0123abcd', 'X-Amz-Date': b'2026'}",
    "x-amz-security-token:FwoG0123abcd\nhost:ec2",
    "POST /tenant/oauth2/v2.0/token client_id=app&client_secret=0123abcd&scope=x",
    '{"osProfile": {"customData": "0123abcd", "adminPassword": "0123\\"abcd"}}',
    "Authorization: Bearer eyJ0123abcd.payload.sig",
    "https://account.blob.core.windows.net/c/b?sv=2020&sig=0123abcd%2B&se=2026",
    "key: -----BEGIN OPENSSH PRIVATE KEY-----\nb3Blb0123abcd\n-----END OPENSSH PRIVATE KEY-----",
])
def test_the_filter_blanks_every_form_the_libraries_print(line: str, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("botocore.endpoint")
    caplog.handler.addFilter(redaction.RedactSecrets())
    with caplog.at_level(logging.DEBUG):
        logger.debug("Sending: %s", line)
    assert "0123abcd" not in caplog.text and "REDACTED" in caplog.text
