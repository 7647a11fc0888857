"""The console of a replicated cluster (real etcd): leaders, leader epochs, replicas and ISR
as GET /v1/cluster gives them."""

from __future__ import annotations

from tests.harness import http_json

TOPICS = {"orders": 4}
REPLICATED = True


def known_states(url: str) -> list[dict] | None:
    status, body = http_json("GET", url + "/v1/cluster")
    states = body.get("partitions", {}).get("orders") if status == 200 else None
    return states if states and all(s is not None for s in states) else None


def shown(console) -> dict[str, tuple[str, str, str, str]]:
    return {p: (r["leader"], r["leader_epoch"], r["replicas"], r["isr"])
            for p, r in console.rows("[data-table=partitions]").items()}


def expected(states: list[dict]) -> dict[str, tuple[str, str, str, str]]:
    return {str(p): (str(s["leader"]), str(s["leader_epoch"]), ", ".join(map(str, s["replicas"])),
                     ", ".join(map(str, s["isr"]))) for p, s in enumerate(states)}


def test_partitions_show_leader_replicas_and_isr_from_the_cluster(console, console_cluster):
    cluster, url = console_cluster
    states = console.wait(lambda: known_states(cluster.urls[0]), "the brokers never knew every partition state", 30)
    assert all(len(s["replicas"]) == 3 for s in states)
    console.open("/topics/orders")
    console.wait(lambda: shown(console) == expected(states), f"partitions never showed {expected(states)}")
    assert console.text("[data-stat=replication]") == "3"
    console.shot("replicas")
    console.open("/")
    console.wait_text("[data-stat=partitions]", "4")
    assert (console.text("[data-stat=under-replicated]"), console.text("[data-stat=offline]")) == ("0", "0")

