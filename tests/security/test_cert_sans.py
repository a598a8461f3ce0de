"""Server certificates name only what is true: the driver's address, the machine's name and the user's --tls-san,
never what the host prints about itself; wildcards are refused before anything is made."""

from __future__ import annotations

from pathlib import Path

from machines.bootstrap import certs
from tests.support.cli import machines
from tests.support.hosts import HostFactory


def test_a_host_announcing_other_addresses_gets_none_of_them(test_host: HostFactory, tmp_path: Path) -> None:
    host = test_host()
    # The host claims addresses and a name that are not its own: extra global addresses, a hostname.
    host.run("ip addr add 203.0.113.9/32 dev eth0 && ip -6 addr add 2001:db8::9/128 dev eth0 && "
             "hostname bank.example.com")
    store = tmp_path / "store"
    machines(store, "create", "-d", "generic", "--generic-ip-address", host.address, "--generic-ssh-key",
             str(host.key_path), "--generic-ssh-host-key", host.host_public_key, "--runtime-data-root",
             "/data/runtime", "--tls-san", "web.example.org", "--tls-san", "192.0.2.7", "honest")
    try:
        sans = certs.cert_sans(store / "machines" / "honest" / certs.SERVER_CERT)
        assert sorted(sans) == sorted([host.address, "127.0.0.1", "192.0.2.7", "honest", "localhost",
                                       "web.example.org"])
    finally:
        machines(store, "rm", "-y", "honest")


def test_wildcards_and_malformed_names_are_refused_before_anything_is_made(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for value in ("*.example.com", "*", "a.*.example.com", "bad name", "-lead.example.com", "a" * 64 + ".com"):
        result = machines(store, "create", "-d", "generic", "--generic-ip-address", "192.0.2.1", "--generic-ssh-key",
                          "/dev/null", "--tls-san", value, "never", check=False)
        assert result.returncode == 2, result.stderr
        assert f"invalid --tls-san {value!r}" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (store / "machines" / "never").exists()
