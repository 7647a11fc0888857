"""The console of a cluster with ``auth:``: it asks for a token and shows only what its principal may see."""

from __future__ import annotations

import urllib.request

import pytest

from shoal.router.server.auth import hash_token
from tests.harness import http_json

OPS, BILLING, GATEWAY = "ops-" + "o" * 40, "billing-" + "b" * 40, "gateway-" + "g" * 40
TOPICS = {"orders": 2, "audit": 1, "ledger": 1, "payments": 1}
EXTRA = {
    "auth": {
        "principals": {
            "ops": {"token_hash": hash_token(OPS), "admin": True},
            "billing": {
                "token_hash": hash_token(BILLING),
                "produce": ["orders", "ledger"],
                "consume": ["orders", "audit"],
                "groups": ["billing-*"],
            },
            "gateway": {"token_hash": hash_token(GATEWAY), "admin": True},
        }
    }
}
GATEWAY_ENV = {"SHOAL_TOKEN": GATEWAY}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def secured(console_cluster):
    cluster, url = console_cluster
    for group in ("billing-1", "fraud"):
        status, body = http_json("PUT", f"{url}/v1/groups/{group}/topics/orders/partitions/0/offset", {"offset": 0},
                                 headers=bearer(OPS))
        assert status == 200, body
    return cluster, url


def test_the_page_and_its_files_need_no_token(secured):
    """They hold no data; a browser loads them before it has a token."""
    _, url = secured
    for path, kind in (("/console/", "text/html"), ("/console/static/console.js", "javascript"),
                       ("/console/static/console.css", "text/css")):
        with urllib.request.urlopen(url + path, timeout=10) as resp:
            assert resp.status == 200 and kind in resp.headers["Content-Type"]
    assert http_json("GET", url + "/console/api/session") == (200, {"auth": True})


@pytest.mark.parametrize(("token", "path", "status"), [
    (None, "/console/api/overview", 401),
    ("not-a-token-this-cluster-knows", "/console/api/topics", 401),
    (BILLING, "/console/api/overview", 200),
    (BILLING, "/console/api/topics/ledger", 200),  # produce is enough to see a topic
    (BILLING, "/console/api/topics/payments", 403),
    (BILLING, "/console/api/topics/audit/partitions/0/records", 200),
    (BILLING, "/console/api/topics/ledger/partitions/0/records", 403),  # browsing needs consume
    (BILLING, "/console/api/groups/billing-1", 200),
    (BILLING, "/console/api/groups/fraud", 403),
    (OPS, "/console/api/topics/payments", 200),
])
def test_what_needs_a_token_and_what_a_principal_may_open(secured, token, path, status):
    _, url = secured
    got, body = http_json("GET", url + path, headers=bearer(token) if token else None)
    assert got == status, body
    if status >= 400:
        assert body["code"] == {401: "UNAUTHORIZED", 403: "FORBIDDEN"}[status]


def test_lists_hold_only_what_the_principal_may_see(secured):
    _, url = secured
    _, topics = http_json("GET", url + "/console/api/topics", headers=bearer(BILLING))
    assert [t["name"] for t in topics["items"]] == ["audit", "ledger", "orders"]
    _, groups = http_json("GET", url + "/console/api/groups", headers=bearer(BILLING))
    assert [g["group"] for g in groups["items"]] == ["billing-1"]
    _, overview = http_json("GET", url + "/console/api/overview", headers=bearer(BILLING))
    assert (overview["principal"], overview["topics"], overview["partitions"]) == ("billing", 3, 4)
    _, everything = http_json("GET", url + "/console/api/groups", headers=bearer(OPS))
    assert [g["group"] for g in everything["items"]] == ["billing-1", "fraud"]


def severe(console) -> list[dict]:
    return [e for e in console.logs() if e["level"] == "SEVERE"]


def test_the_page_asks_for_a_token_and_shows_the_principal_s_view(console, secured):
    cluster, url = secured
    console.open("/topics")
    console.wait(lambda: console.driver.find_element("id", "login").is_displayed(), "no token prompt")
    assert console.rows() == {}
    console.shot("login")

    token = console.driver.find_element("id", "token")
    token.send_keys("not-a-token-this-cluster-knows\n")
    console.wait_text("#login-error")
    assert "not accepted" in console.text("#login-error")
    # The refused token is the one expected error: the browser logs the 401 it got.
    assert [e for e in severe(console) if "401" not in e["message"]] == []

    token = console.driver.find_element("id", "token")
    token.clear()
    token.send_keys(BILLING + "\n")
    console.wait(lambda: list(console.rows()) == ["audit", "ledger", "orders"], "billing's topics never showed")
    assert console.text("#principal") == "as billing"
    console.open("/groups")
    console.wait(lambda: list(console.rows()) == ["billing-1"], "billing's groups never showed")
    console.open("/topics/payments")
    console.wait(lambda: "FORBIDDEN" in (console.text("#banner") or ""), "opening a forbidden topic showed no error")
    assert [e for e in severe(console) if "403" not in e["message"]] == []

    console.driver.find_element("id", "forget").click()
    console.wait(lambda: console.driver.find_element("id", "login").is_displayed(), "forgetting the token did not ask again")
    assert console.driver.execute_script("return sessionStorage.length") == 0
    assert severe(console) == []
    assert [r for r in console.resources() if not r.startswith(url + "/")] == []
