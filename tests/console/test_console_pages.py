"""The console in a real headless Chromium against three real brokers and a real gateway.

One browser session for the module. After every test the browser's console log must
hold no error and every resource the page loaded must come from the gateway itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from tests.harness import http_json

TOPICS = {"orders": 6, "payments": 3, "audit": 2, **{f"t-{i:03d}": 1 for i in range(55)}}
ALL_TOPICS = sorted(TOPICS)


@pytest.fixture(scope="module")
def traffic(console_cluster):
    """Records in every partition of orders, and group billing's commits (no live member)."""
    cluster, url = console_cluster
    for p in range(6):
        records = [{"key": f"k{p}-{i}", "value": f"order {p}-{i}"} for i in range(10 + p)]
        assert http_json("POST", f"{url}/v1/topics/orders/partitions/{p}/records", {"records": records})[0] == 200
    for p in range(6):
        status, _ = http_json("PUT", f"{url}/v1/groups/billing/topics/orders/partitions/{p}/offset", {"offset": p})
        assert status == 200
    return cluster, url


@pytest.fixture(autouse=True)
def clean_browser(console):
    """No JavaScript error and nothing from another origin, whatever the test did."""
    console.logs()  # drop what earlier set-up left
    yield
    errors = [e for e in console.logs() if e["level"] == "SEVERE"]
    assert errors == [], errors
    foreign = [r for r in console.resources() if not r.startswith(console.base + "/")]
    assert foreign == [], foreign


def test_overview_shows_the_cluster_the_api_describes(console, traffic):
    cluster, url = traffic
    _, described = http_json("GET", url + "/v1/cluster")
    console.open("/")
    console.wait_text("[data-stat=epoch]", str(described["epoch"]))
    assert console.text("[data-stat=cluster]") == described["cluster"]
    assert console.text("[data-stat=brokers-up]") == "3 / 3"
    partitions = sum(t["partitions"] for t in described["topics"].values())
    assert console.text("[data-stat=partitions]") == f"{partitions:,}"
    assert console.text("[data-stat=offline]") == "0"
    assert console.text("[data-stat=under-replicated]") == "0"
    rows = console.rows()
    assert sorted(rows) == sorted(str(b["id"]) for b in described["brokers"])
    led = {str(b["id"]): 0 for b in described["brokers"]}
    for owners in described["owners"].values():
        for owner in owners:
            led[str(owner)] += 1
    assert {k: int(r["leader_of"].replace(",", "")) for k, r in rows.items()} == led
    assert all(r["health"] == "up" for r in rows.values())
    console.shot("overview")


def test_topics_list_is_paginated_and_searchable(console, traffic):
    console.open("/topics")
    console.wait(lambda: console.rows(), "no topic rows")
    assert list(console.rows()) == ALL_TOPICS[:50]
    assert console.text("[data-pager]") == f"1–50 of {len(ALL_TOPICS)}"
    console.shot("topics")
    console.driver.find_element("xpath", "//button[contains(., 'next')]").click()
    console.wait(lambda: list(console.rows()) == ALL_TOPICS[50:], "the second page never showed")
    search = console.driver.find_element("css selector", "input[type=search]")
    search.send_keys("ORD")  # case-insensitive
    console.wait(lambda: list(console.rows()) == ["orders"], "searching 'ORD' did not leave orders alone")
    row = console.rows()["orders"]
    assert (row["partitions"], row["replication"], row["records"]) == ("6", "1", f"{sum(10 + p for p in range(6))}")


def test_topic_page_shows_each_partition_as_the_brokers_do(console, traffic):
    cluster, url = traffic
    _, described = http_json("GET", url + "/v1/cluster")
    console.open("/topics/orders")
    console.wait(lambda: len(console.rows("[data-table=partitions]")) == 6, "orders' partitions never showed")
    rows = console.rows("[data-table=partitions]")
    for p in range(6):
        _, marks = http_json("GET", f"{url}/v1/topics/orders/partitions/{p}/offsets")
        owner = described["owners"]["orders"][p]
        row = rows[str(p)]
        assert (row["leader"], row["replicas"], row["isr"]) == (str(owner), str(owner), str(owner))
        assert (row["high_watermark"], row["log_start_offset"]) == (str(marks["high_watermark"]), "0")


def browse(console, partition: int, mode: str = "newest", count: int = 20, start: str = "", fmt: str = "auto"):
    from selenium.webdriver.support.ui import Select

    form = console.driver.find_element("css selector", "form.toolbar")
    for name, value in (("partition", partition), ("count", count), ("from", start)):
        field = form.find_element("name", name)
        field.clear()
        field.send_keys(str(value))
    Select(form.find_element("name", "mode")).select_by_value(mode)
    Select(form.find_element("name", "format")).select_by_value(fmt)
    form.find_element("css selector", "button[type=submit]").click()  # says "reading…" before it returns
    console.wait(lambda: "records from" in console.text("[data-browse-status]"), "browse gave no answer")
    return console.rows("[data-table=records]")


def test_record_browser_shows_a_record_just_produced(console, traffic):
    cluster, url = traffic
    body = {"records": [
        {"key": "user-7", "value": json.dumps({"amount": 12, "items": ["a", "b"]}), "headers": {"trace": "t-1"}},
        {"key": "bin", "value_b64": "AAEC/w=="},
    ]}
    status, ack = http_json("POST", f"{url}/v1/topics/payments/partitions/1/records", body)
    assert status == 200
    console.open("/topics/payments")
    console.wait(lambda: console.rows("[data-table=partitions]"), "payments' partitions never showed")
    rows = browse(console, 1, count=5)
    first, second = str(ack["base_offset"]), str(ack["base_offset"] + 1)
    assert list(rows) == [first, second]
    assert rows[first]["key"] == "user-7"
    assert json.loads(rows[first]["value"]) == {"amount": 12, "items": ["a", "b"]}
    assert rows[first]["value"].startswith("{\n  ")  # pretty-printed
    assert rows[first]["headers"].split() == ["trace", "t-1"]
    assert rows[second]["value"] == "00 01 02 ff"  # binary shows as hex
    console.shot("records", scroll_to="form.toolbar")
    rows = browse(console, 1, count=5, fmt="hex")
    assert rows[first]["key"] == "75 73 65 72 2d 37"  # "user-7"


def test_record_browser_is_bounded_and_reads_from_an_offset(console, traffic):
    console.open("/topics/orders")
    console.wait(lambda: console.rows("[data-table=partitions]"), "orders' partitions never showed")
    rows = browse(console, 5, mode="offset", count=3, start="4")
    assert list(rows) == ["4", "5", "6"]
    assert [r["value"] for r in rows.values()] == ["order 5-4", "order 5-5", "order 5-6"]
    assert "stopped by the count limit" in console.text("[data-browse-status]")
    rows = browse(console, 5, mode="timestamp", count=2, start="2000-01-01T00:00:00Z")
    assert list(rows) == ["0", "1"]


def test_groups_show_lag_equal_to_the_api(console, traffic):
    cluster, url = traffic
    _, api = http_json("GET", url + "/v1/groups/billing")
    console.open("/groups")
    console.wait(lambda: "billing" in console.rows(), "group billing never showed")
    row = console.rows()["billing"]
    assert row["lag"] == f"{api['lag']:,}"
    assert (row["partitions"], row["topics"], row["state"], row["members"]) == ("6", "orders", "empty", "0")
    console.open("/groups/billing")
    console.wait_text("[data-stat=lag]", f"{api['lag']:,}")
    rows = console.rows("[data-table=lag]")
    assert {k: int(r["lag"]) for k, r in rows.items()} == {f"orders/{r['partition']}": r["lag"] for r in api["partitions"]}
    assert {k: int(r["offset"]) for k, r in rows.items()} == {f"orders/{r['partition']}": r["offset"] for r in api["partitions"]}


def test_a_live_group_shows_its_members_and_assignments(console, traffic, tmp_path):
    cluster, url = traffic
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.group_worker", ",".join(cluster.urls), "readers", "orders",
         str(tmp_path / "out")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        member = console.wait(lambda: (tmp_path / "out.member").exists() and (tmp_path / "out.member").read_text(),
                              "the worker never joined")
        console.open("/groups/readers")
        console.wait(lambda: console.text("[data-stat=state]") == "stable" and console.rows("[data-table=members]"),
                     "group readers never showed stable with a member")
        members = console.rows("[data-table=members]")
        assert list(members) == [member]
        assert members[member]["assignment"] == "orders: 0,1,2,3,4,5"
        lag_table = "[data-table=lag]"
        console.wait(lambda: len(rows := console.rows(lag_table)) == 6 and all(r["lag"] == "0" for r in rows.values()),
                     "the live group's commits never showed lag 0 on each partition")
        assert {r["member"] for r in console.rows(lag_table).values()} == {member}
        assert console.text("[data-stat=lag]") == "0"
        console.shot("group")
    finally:
        worker.terminate()
        worker.wait(10)


def test_overview_and_topics_update_while_a_producer_runs(console, traffic):
    cluster, url = traffic
    stop = threading.Event()

    def produce():
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            http_json("POST", f"{url}/v1/topics/audit/records", {"records": [{"value": "x" * 100}] * 50})

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        console.open("/")
        console.wait(lambda: float((console.text("[data-stat=records-in]") or "0").replace(",", "")) > 0,
                     "records/s in never rose while a producer ran")
        console.wait(lambda: len(console.driver.find_elements("css selector", "polyline[data-series=records_in_per_s]")) == 1
                     and console.driver.find_element("css selector", "polyline[data-series=records_in_per_s]")
                     .get_attribute("points").count(",") >= 2, "the chart never drew two points")
        console.shot("overview-live")
        console.open("/topics?q=audit")
        first = int(console.wait(lambda: console.rows().get("audit", {}).get("records"), "audit never showed").replace(",", ""))
        console.wait(lambda: int(console.rows()["audit"]["records"].replace(",", "")) > first,
                     "the topic's record count did not move while a producer ran")
    finally:
        stop.set()
        producer.join()


def test_brokers_page_matches_the_brokers(console, traffic):
    cluster, url = traffic
    console.open("/brokers")
    console.wait(lambda: len(console.rows()) == 3, "three brokers never showed")
    rows = console.rows()
    for broker_id in cluster.ports:
        _, health = http_json("GET", cluster.url(broker_id) + "/v1/health")
        row = rows[str(broker_id)]
        assert (row["health"], row["epoch"]) == ("up", str(health["epoch"]))
        assert row["disk"] != "—"
    links = console.driver.find_elements("css selector", "td[data-col=links] a")
    assert sorted(a.get_attribute("href") for a in links) == sorted(
        [u + "/metrics" for u in cluster.urls] + [u + "/v1/health" for u in cluster.urls])
    console.shot("brokers")


@pytest.mark.parametrize(("path", "status", "field"), [
    ("/console/api/topics?limit=0", 400, "limit"),
    ("/console/api/topics?limit=501", 400, "limit"),
    ("/console/api/topics?offset=-1", 400, "offset"),
    ("/console/api/topics/orders/partitions/0/records?mode=sideways", 400, "mode"),
    ("/console/api/topics/orders/partitions/0/records?count=501", 400, "count"),
    ("/console/api/topics/orders/partitions/0/records?max_bytes=0", 400, "max_bytes"),
    ("/console/api/topics/nope", 404, None),
    ("/console/api/topics/orders/partitions/6/records", 404, None),
    ("/console/api/groups/bad%20name", 400, "group"),
])
def test_bad_console_requests_get_a_problem(console_cluster, path, status, field):
    """Every bad query is a problem+json with a code, and the console answers no write method."""
    _, url = console_cluster
    got, body = http_json("GET", url + path)
    assert got == status, body
    assert body["code"] and body.get("field") == field


def test_the_console_answers_no_write_method(console_cluster):
    _, url = console_cluster
    for path in ("/console/api/topics", "/console/api/groups/billing", "/console/"):
        got, body = http_json("POST", url + path, {})
        assert (got, body["code"]) == (405, "METHOD_NOT_ALLOWED")


def test_router_start_prints_the_console_url(console_cluster):
    cluster, url = console_cluster
    log = (cluster.root / f"gateway-{url.rsplit(':', 1)[1]}.log").read_text()
    assert f"console: {url}/console/ (read-only)" in log.splitlines()


def test_a_broker_down_shows_as_down_with_its_partitions_offline(console, traffic):
    """Last in the module: it kills a broker."""
    cluster, url = traffic
    _, described = http_json("GET", url + "/v1/cluster")
    victim = 2
    owned = sum(o == victim for owners in described["owners"].values() for o in owners)
    cluster.kill(victim)
    console.open("/")
    console.wait_text("[data-stat=brokers-up]", "2 / 3")
    console.wait_text("[data-stat=offline]", f"{owned:,}")
    assert console.rows()[str(victim)]["health"].startswith("down")
