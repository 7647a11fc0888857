"""The auth: and tls: sections of cluster.yaml: validation, permissions, and what stays local."""

from __future__ import annotations

import pytest

from shoal.router.server.auth import hash_token, new_token
from shoal.router.topology import Topology, TopologyError, parse_topology

OPS, BILLING = "ops-token-0123456789abcdef", "billing-token-0123456789abcdef"

BASE = """\
cluster: c
epoch: 3
brokers:
  - {id: 1, url: "URL"}
topics:
  orders: {partitions: 2}
"""


def doc(extra: str, url: str = "http://127.0.0.1:9091") -> str:
    return BASE.replace("URL", url) + extra


AUTH = f"""\
auth:
  principals:
    ops: {{token_hash: "{hash_token(OPS)}", admin: true}}
    billing:
      token_hash: "{hash_token(BILLING)}"
      produce: [orders, "payments.*"]
      consume: [orders]
      groups: ["billing-*"]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "cluster.yaml")
    return info.value.problems


def test_principals_authenticate_by_token_and_match_patterns():
    """A token maps to its principal; patterns grant per topic and group; admin grants all."""
    topo = parse_topology(doc(AUTH), "cluster.yaml")
    billing = topo.auth.authenticate(BILLING)
    assert billing.name == "billing" and not billing.admin
    assert topo.auth.authenticate("billing-token-0123456789abcdeX") is None
    assert billing.allows("produce", "orders") and billing.allows("produce", "payments.eu")
    assert not billing.allows("produce", "payments") and not billing.allows("consume", "payments.eu")
    assert billing.allows("groups", "billing-1") and not billing.allows("groups", "billing")
    ops = topo.auth.authenticate(OPS)
    assert ops.admin and ops.allows("produce", "anything") and ops.allows("groups", "any")


def test_hashes_only_are_stored():
    """hash_token is sha256 hex; a fresh token is long and random."""
    assert hash_token("abc") == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    first, second = new_token(), new_token()
    assert first != second and len(first) >= 43


def test_every_auth_problem_at_once_with_its_line():
    """A plaintext token, a bad pattern, a reused token, a non-boolean admin and an unknown key."""
    text = doc(f"""\
auth:
  principals:
    a: {{token_hash: "{OPS}"}}
    b: {{token_hash: "{hash_token(BILLING)}", produce: ["orders/../x"], colour: red}}
    c: {{token_hash: "{hash_token(BILLING)}", admin: "yes"}}
    d: {{consume: orders}}
""")
    assert problems(text) == [
        "cluster.yaml:9: auth.principals.a.token_hash: must be sha256:<64 lowercase hex digits>, the hash of a token "
        "(make one with `shoal auth new-token`)",
        "cluster.yaml:10: auth.principals.b.colour: unknown key (expected one of: token_hash, admin, replication, produce, consume, groups)",
        "cluster.yaml:10: auth.principals.b.produce[0]: must be a name pattern of A-Z a-z 0-9 . _ - and the wildcards * ?, "
        "got 'orders/../x'",
        "cluster.yaml:11: auth.principals.c.token_hash: the same token as principal b",
        "cluster.yaml:11: auth.principals.c.admin: must be true or false, got 'yes'",
        "cluster.yaml:12: auth.principals.d: missing token_hash",
        "cluster.yaml:12: auth.principals.d.consume: must be a list of name patterns, got 'orders'",
    ]


def test_auth_needs_principals():
    assert problems(doc("auth: {}\n")) == [
        "cluster.yaml:7: auth.principals: must map at least one principal name to its token_hash and permissions"
    ]


def test_tls_needs_cert_key_and_https_brokers():
    """Every TLS problem is named: the missing key and each http:// broker."""
    assert problems(doc("tls: {cert_file: s.pem, ca_file: 7}\n")) == [
        "cluster.yaml:7: tls: missing key_file",
        "cluster.yaml:7: tls.ca_file: must be a file path, got 7",
        "cluster.yaml:7: tls: is set, so broker 1 must have an https:// url, not http://127.0.0.1:9091",
    ]
    topo = parse_topology(doc("tls: {cert_file: s.pem, key_file: s.key}\n", "https://h:1"), "cluster.yaml")
    assert (topo.tls.cert_file, topo.tls.key_file, topo.tls.ca_file) == ("s.pem", "s.key", None)


def test_auth_and_tls_stay_local():
    """GET /v1/cluster never shows them, PUT /v1/cluster refuses them, and cluster.yaml rewrites keep them."""
    topo = parse_topology(doc(AUTH + "tls: {cert_file: s.pem, key_file: s.key, ca_file: ca.pem}\n", "https://h:1"))
    wire = topo.to_dict()
    assert "auth" not in wire and "tls" not in wire and hash_token(OPS) not in repr(wire)
    assert Topology.from_dict(wire).auth is None
    with pytest.raises(TopologyError) as info:
        Topology.from_dict({**wire, "auth": topo.auth.to_dict()}, source="PUT /v1/cluster")
    assert info.value.problems == [
        "PUT /v1/cluster: auth: is read from each process's cluster.yaml at start-up, never installed over the API"
    ]
    assert parse_topology(topo.to_yaml()) == topo
