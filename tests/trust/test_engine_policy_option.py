"""``machines create --engine-trust-policy``: the policy is made self-contained and checked before anything is made."""

from __future__ import annotations

import base64
import json

import pytest

from machines.errors import UsageError
from machines.hostoptions import HostOptions
from machines.runtime.images import trust
from machines.trust.policy import load_policy
from tests.trust.conftest import run_machines


def test_key_paths_are_inlined_relative_to_the_policy_and_kept_in_host_options(tmp_path, keypair):
    _, public, _ = keypair
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "policy.json").write_text(json.dumps({
        "default": [{"type": "reject"}],
        "transports": {"docker": {"registry.example/team": [
            {"type": "sigstoreSigned", "keyPath": "../cosign.pub", "signedIdentity": {"type": "matchRepository"}}]}}}))
    text = load_policy(str(folder / "policy.json"))
    rule = json.loads(text)["transports"]["docker"]["registry.example/team"][0]
    assert "keyPath" not in rule and base64.b64decode(rule["keyData"]) == public.read_bytes()
    options = HostOptions(trust_policy=text)
    assert HostOptions.from_record(options.to_record()) == options
    trust.Policy(text.encode())  # what the runtime will read


@pytest.mark.parametrize("content, message", [
    ("{", "is not JSON"),
    ('{"default": [{"type": "sigstoreSigned", "keyPath": "missing.pub"}]}', "cannot read key"),
    ('{"default": [{"type": "signedBy", "keyType": "X509Certificates", "keyData": "eA=="}]}',
     "keyType 'X509Certificates' is not supported"),
    ('{"transports": {}}', '"default" must be a list of requirements'),
])
def test_bad_policies_are_refused(tmp_path, content, message):
    path = tmp_path / "policy.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        load_policy(str(path))


def test_create_refuses_a_bad_policy_before_making_anything(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text('{"default": [{"type": "maybe"}]}')
    store = tmp_path / "store"
    result = run_machines("--storage-path", str(store), "create", "--engine-trust-policy", str(path), "m1")
    assert result.code == 2
    assert result.err.strip() == ("Error: --engine-trust-policy: invalid trust policy: default: unknown requirement "
                                  "type 'maybe'")
    assert not (store / "machines" / "m1").exists()


def test_engine_scan_options_are_checked_and_kept(tmp_path):
    result = run_machines("--storage-path", str(tmp_path / "store"), "create", "--engine-scan", "severe",
                          "--engine-scan-db", str(tmp_path), "m1")
    assert result.code == 2
    assert result.err.strip() == "Error: --engine-scan must be one of low, medium, high, critical, not 'severe'"
    options = HostOptions(scan_fail_on="high", scan_db="/osv")
    assert HostOptions.from_record(options.to_record()) == options


def test_docker_engine_machines_cannot_promise_a_policy_or_a_scan():
    with pytest.raises(UsageError, match="need the machines engine, not --engine docker"):
        HostOptions(engine_name="docker", trust_policy='{"default": [{"type": "reject"}]}')
    with pytest.raises(UsageError, match="need the machines engine"):
        HostOptions(engine_name="docker", scan_fail_on="high", scan_db="/osv")
