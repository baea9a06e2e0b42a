"""The private network itself: real relays, the reference C tor client, the DNS server and the HTTP target."""

import hashlib
import subprocess
import urllib.request

from tests.support.network import TestNetwork

TEN_MB = 10 * 1000 * 1000


def curl_through(socks_port: int, url: str, *extra: str, max_time: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", str(max_time), "--socks5-hostname",
                           f"127.0.0.1:{socks_port}", *extra, url], capture_output=True, timeout=max_time + 30)


def expected_sha256(network: TestNetwork, length: int) -> str:
    with urllib.request.urlopen(network.url(f"/sha256/{length}"), timeout=10) as response:
        return response.read().decode().strip()


def test_consensus_lists_every_relay_running_and_valid(network: TestNetwork):
    relays = network.relays()
    assert len(relays) == 10
    for relay in relays:
        consensus = open(f"{relay['data_directory']}/cached-microdesc-consensus").read()
        for other in relays:
            assert f" {other['nickname']} " in consensus, (relay["nickname"], other["nickname"])
        assert consensus.count("Running") >= len(relays)


def test_the_bridges_are_running_and_not_in_the_consensus(network: TestNetwork):
    assert [bridge["transport"] for bridge in network.bridges] == [None, "obfs4"]
    consensus = open(f"{network.relays()[0]['data_directory']}/cached-microdesc-consensus").read()
    for bridge in network.bridges:
        assert bridge["fingerprint"] in bridge["bridge_line"].split()
        assert f" {bridge['nickname']} " not in consensus
        assert "Bootstrapped 100%" in open(f"{bridge['data_directory']}/notice.log").read()
    obfs4 = network.bridge("obfs4")["bridge_line"].split()
    assert obfs4[:2] == ["obfs4", f"127.0.0.1:{network.bridge('obfs4')['ports']['obfs4']}"]
    assert obfs4[3].startswith("cert=") and obfs4[4] == "iat-mode=0"


def test_ten_megabytes_through_the_reference_client_are_byte_exact(network: TestNetwork):
    result = curl_through(network.socks_port, network.url(f"/bytes/{TEN_MB}"))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == TEN_MB
    assert hashlib.sha256(result.stdout).hexdigest() == expected_sha256(network, TEN_MB)


def test_a_test_hostname_resolves_at_the_exit(network: TestNetwork):
    result = curl_through(network.socks_port, network.url("/", host="target.test"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from the oppy test target\n"


def test_an_unknown_hostname_fails_at_the_exit(network: TestNetwork):
    result = curl_through(network.socks_port, network.url("/", host="no-such-name.invalid"))
    assert result.returncode == 97  # curl: the SOCKS proxy refused the connection (host unreachable)
    assert result.stdout == b""


def test_upload_hash_is_confirmed_by_the_target(network: TestNetwork):
    body = hashlib.shake_256(b"upload").digest(300_000)
    result = subprocess.run(["curl", "-sS", "--max-time", "60", "--data-binary", "@-", network.url("/upload")],
                            input=body, capture_output=True, timeout=90)
    assert result.stdout.decode().strip() == f"sha256={hashlib.sha256(body).hexdigest()} length={len(body)}"


def test_the_reference_client_reaches_the_onion_service(network: TestNetwork):
    onion = network.onion
    # Late in the suite the reference client has seen relays killed and services stopped by the tests before:
    # once its learned build timeout was reset to 60 s ("Resetting timeout to 60000ms after 18 timeouts"), and
    # one lost rendezvous then took it past a 60 s curl (seen once in CI). tor retries until SocksTimeout (120 s).
    result = curl_through(network.socks_port, f"http://{onion['plain']['address']}:{onion['virtual_port']}/",
                          max_time=150)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from the oppy test target\n"


def test_the_client_auth_service_refuses_a_client_without_its_key(network: TestNetwork):
    onion = network.onion
    result = curl_through(network.socks_port, f"http://{onion['auth']['address']}:{onion['virtual_port']}/")
    assert result.returncode == 97  # the reference client has no key: SOCKS refused
    assert onion["auth"]["client_key_line"].startswith(onion["auth"]["address"].removesuffix(".onion") +
                                                       ":descriptor:x25519:")
