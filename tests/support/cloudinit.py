"""Reading user data the way cloud-init does, for fake clouds' data planes and tests of cloud drivers."""

from __future__ import annotations

import email
from typing import Any

import yaml


def cloud_configs(user_data: str) -> list[dict[str, Any]]:
    """Every cloud-config document in the user data, plain or in a MIME multipart, parsed as cloud-init does."""
    if user_data.startswith("Content-Type: multipart"):
        parts = [part.get_payload(decode=True).decode() for part in email.message_from_string(user_data).walk()
                 if part.get_content_type() == "text/cloud-config"]
    else:
        parts = [user_data]
    return [yaml.safe_load(part) for part in parts if part.startswith("#cloud-config")]
