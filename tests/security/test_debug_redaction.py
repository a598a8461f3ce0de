"""``--debug`` never prints credentials, tokens, user data or keys (issue 11 item 7): the redaction filter blanks
every form the SDKs print them in. Real ``create --debug`` runs against the fake clouds are in
``tests/aws/test_debug_redaction.py`` and ``tests/azure/test_debug_redaction.py``.
"""

from __future__ import annotations

import logging

import pytest

from machines import redaction


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
