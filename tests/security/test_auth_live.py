"""Bearer-token auth on a real broker and a real gateway: who may do what, and what stays open."""

from __future__ import annotations

import aiohttp
import pytest
import yaml

from shoal.client.errors import ShoalError
from shoal.router.server.auth import hash_token
from shoal.router.hashing import group_coordinator
from tests.security.procs import start_gateway

OPS, BILLING, GATEWAY = "ops-" + "o" * 40, "billing-" + "b" * 40, "gateway-" + "g" * 40
AUTH = {
    "principals": {
        "ops": {"token_hash": hash_token(OPS), "admin": True},
        "billing": {
            "token_hash": hash_token(BILLING),
            "produce": ["orders"],
            "consume": ["orders", "audit"],
            "groups": ["billing-*"],
        },
        "gateway": {"token_hash": hash_token(GATEWAY), "admin": True},
    }
}
BATCHLESS = {"records": [{"value": "v"}]}


@pytest.fixture
def secured(cluster_factory):
    cluster = cluster_factory(1, {"orders": 1, "audit": 1}, start=False)
    cluster.config["auth"] = AUTH
    cluster.config_path.write_text(yaml.safe_dump(cluster.config, sort_keys=False))
    cluster.start()
    return cluster


async def call(url: str, method: str, path: str, token: str | None = None, **kw) -> tuple[int, dict | str, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url + path, headers=headers, **kw) as resp:
            if resp.content_type.endswith("json"):
                return resp.status, await resp.json(content_type=None), resp.headers
            return resp.status, await resp.text(), resp.headers


P = "/v1/topics/{}/partitions/0"
COMMIT = "/v1/groups/{}/topics/orders/partitions/0/offset"
# (caller, method, path, json body, status, code): each row one rule of router/server/auth.py.
CASES = [
    (None, "GET", "/v1/health", None, 200, None),
    (None, "GET", "/metrics", None, 200, None),
    (None, "GET", "/v1/openapi.json", None, 200, None),
    (None, "GET", "/v1/cluster", None, 401, "UNAUTHORIZED"),
    ("not-a-known-token-at-all", "GET", "/v1/cluster", None, 401, "UNAUTHORIZED"),
    (BILLING, "GET", "/v1/cluster", None, 200, None),
    (None, "POST", P.format("orders") + "/records", BATCHLESS, 401, "UNAUTHORIZED"),
    (BILLING, "POST", P.format("orders") + "/records", BATCHLESS, 200, None),
    (BILLING, "POST", P.format("audit") + "/records", BATCHLESS, 403, "FORBIDDEN"),
    (OPS, "POST", P.format("audit") + "/records", BATCHLESS, 200, None),
    (BILLING, "GET", P.format("audit") + "/records?offset=0", None, 200, None),
    (BILLING, "GET", P.format("orders") + "/offsets", None, 200, None),
    (BILLING, "PUT", COMMIT.format("billing-1"), {"offset": 1}, 200, None),
    (BILLING, "GET", COMMIT.format("billing-1"), None, 200, None),
    (BILLING, "PUT", COMMIT.format("other"), {"offset": 1}, 403, "FORBIDDEN"),
    (BILLING, "GET", "/v1/groups/billing-1", None, 200, None),
    (BILLING, "GET", "/v1/groups/other", None, 403, "FORBIDDEN"),
    (BILLING, "GET", "/v1/groups", None, 403, "FORBIDDEN"),
    (BILLING, "DELETE", "/v1/groups/billing-1", None, 403, "FORBIDDEN"),
    (OPS, "GET", "/v1/groups", None, 200, None),
    (BILLING, "GET", "/v1/no/such/path", None, 404, "NOT_FOUND"),
    (None, "GET", "/v1/no/such/path", None, 401, "UNAUTHORIZED"),
]


async def test_each_route_needs_its_permission(secured):
    """Open probes, any token for the topology, produce/consume per topic, groups per group, admin for the rest."""
    url = secured.url(1)
    for token, method, path, body, status, code in CASES:
        got, answer, headers = await call(url, method, path, token, json=body)
        case = f"{method} {path} as {token and token.split('-')[0]}: {answer}"
        assert got == status, case
        if code:
            assert answer["code"] == code and headers["Content-Type"] == "application/problem+json", case
            assert type(ShoalError.from_problem(answer)).code == code
        if code == "UNAUTHORIZED":
            assert headers["WWW-Authenticate"] == 'Bearer realm="shoal"', case
        if code == "FORBIDDEN":
            assert answer["principal"] == "billing" and answer["permission"], case


async def test_admin_alone_installs_a_topology_and_deletes_groups(secured):
    """PUT /v1/cluster and DELETE /v1/groups/{group} need admin; nothing changes when refused."""
    url = secured.url(1)
    _, topo, _ = await call(url, "GET", "/v1/cluster", OPS)
    newer = {**topo, "epoch": topo["epoch"] + 1}
    status, answer, _ = await call(url, "PUT", "/v1/cluster", BILLING, json=newer)
    assert (status, answer["code"], answer["permission"]) == (403, "FORBIDDEN", "admin")
    assert (await call(url, "GET", "/v1/health"))[1]["epoch"] == topo["epoch"]
    status, answer, _ = await call(url, "PUT", "/v1/cluster", OPS, json=newer)
    assert status == 200 and answer["epoch"] == topo["epoch"] + 1
    assert "auth" not in answer
    # the installed epoch came over the wire without auth:, and auth still holds
    assert (await call(url, "GET", "/v1/cluster"))[0] == 401
    assert (await call(url, "PUT", COMMIT.format("billing-1"), BILLING, json={"offset": 0}))[0] == 200
    assert (await call(url, "DELETE", "/v1/groups/billing-1", OPS))[0] == 200
    _, answer, _ = await call(url, "GET", COMMIT.format("billing-1"), BILLING)
    assert answer["offset"] is None


async def test_a_malformed_authorization_header_is_401(secured):
    for header in ("Basic b3BzOm9wcw==", "Bearer", "Bearer   ", OPS):
        async with aiohttp.ClientSession() as http:
            async with http.get(secured.url(1) + "/v1/cluster", headers={"Authorization": header}) as resp:
                assert resp.status == 401, header
                assert (await resp.json(content_type=None))["code"] == "UNAUTHORIZED"


async def test_gateway_checks_callers_and_forwards_their_token(secured):
    """The gateway refuses what the brokers would, and its own token serves cluster-wide views."""
    proc, url = start_gateway(secured.config_path, secured.root, env={"SHOAL_TOKEN": GATEWAY})
    try:
        assert (await call(url, "GET", "/v1/health"))[0] == 200
        assert (await call(url, "POST", P.format("orders") + "/records", None, json=BATCHLESS))[0] == 401
        status, answer, _ = await call(url, "POST", P.format("orders") + "/records", BILLING, json=BATCHLESS)
        assert status == 200, answer
        status, answer, _ = await call(url, "POST", "/v1/topics/audit/records", BILLING, json=BATCHLESS)
        assert (status, answer["code"]) == (403, "FORBIDDEN")
        status, answer, _ = await call(url, "POST", "/v1/topics/orders/records", BILLING, json=BATCHLESS)
        assert status == 200, answer
        assert (await call(url, "GET", "/v1/groups", BILLING))[0] == 403
        status, answer, _ = await call(url, "GET", "/v1/groups", OPS)
        assert status == 200, answer
        # a forwarded request carries the caller's token, which the owner checks too
        status, answer, _ = await call(url, "GET", P.format("orders") + "/records?offset=0", "no-such-token-here")
        assert (status, answer["code"]) == (401, "UNAUTHORIZED")
    finally:
        proc.stop()


async def test_a_commit_whose_group_is_coordinated_elsewhere_is_accepted(cluster_factory):
    """On a 3-broker cluster the partition's owner asks the group's coordinator to fence the
    commit with the committer's own token, which the coordinator accepts."""
    cluster = cluster_factory(3, {"orders": 1}, start=False)
    cluster.config["auth"] = AUTH
    cluster.config_path.write_text(yaml.safe_dump(cluster.config, sort_keys=False))
    cluster.start()
    _, topo, _ = await call(cluster.urls[0], "GET", "/v1/cluster", OPS)
    owner = topo["owners"]["orders"][0]
    ids = [b["id"] for b in topo["brokers"]]
    group = next(f"billing-{i}" for i in range(100) if group_coordinator(f"billing-{i}", ids) != owner)
    url = cluster.url(owner)
    assert (await call(url, "POST", P.format("orders") + "/records", BILLING, json=BATCHLESS))[0] == 200
    status, answer, _ = await call(url, "PUT", COMMIT.format(group), BILLING, json={"offset": 1})
    assert status == 200, answer
