"""Encoded path traversal against a live broker: refused with problem+json, nothing written outside data_dir."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path

from shoal.client.records import encode_batch

NAMES = [
    "..%2F..%2Fescaped",
    "%2e%2e%2f%2e%2e%2fescaped",
    "..%252F..%252Fescaped",
    "..%5C..%5Cescaped",
    "%2e%2e",
    "..",
    "escaped%00",
    "%2Ftmp%2Fescaped",
    "escaped%2F..%2F..%2F..%2Fx",
    "..%c0%af..%c0%afescaped",
    "t%2F..%2F..%2Fescaped",
]


def tree(root: Path, skip: Path) -> set[str]:
    """Every path under ``root`` except inside ``skip`` and the broker logs."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            continue
        out.update(os.path.join(dirpath, f) for f in filenames if not f.endswith(".log"))
        out.update(os.path.join(dirpath, d) for d in dirnames)
    return out


def send(port: int, method: str, raw_path: str, body: bytes, ctype: str) -> tuple[int, str | None, bytes]:
    """The path goes on the wire exactly as written (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, raw_path, skip_accept_encoding=True)
        conn.putheader("Content-Type", ctype)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.headers.get("Content-Type"), resp.read()
    finally:
        conn.close()


def test_encoded_traversal_never_leaves_the_data_dir(cluster_factory):
    """Topic and group names that decode to ../, / or NUL get 4xx problem+json; no file appears elsewhere."""
    cluster = cluster_factory(1, {"t": 1})
    data_dir = Path(cluster.config["brokers"][0]["data_dir"])
    before = tree(cluster.root.parent, data_dir)
    inside_before = set(os.listdir(data_dir))
    port = cluster.ports[1]
    batch = encode_batch([(None, b"x", None, 1)])
    commit = json.dumps({"offset": 0}).encode()
    for name in NAMES:
        attempts = [
            ("POST", f"/v1/topics/{name}/partitions/0/records", batch, "application/vnd.shoal.batch"),
            ("GET", f"/v1/topics/{name}/partitions/0/records?offset=0", b"", "application/json"),
            ("GET", f"/v1/topics/{name}/partitions/0/offsets", b"", "application/json"),
            ("PUT", f"/v1/groups/{name}/topics/t/partitions/0/offset", commit, "application/json"),
            ("PUT", f"/v1/groups/g/topics/{name}/partitions/0/offset", commit, "application/json"),
            ("DELETE", f"/v1/groups/{name}", b"", "application/json"),
            ("GET", f"/v1/groups/{name}", b"", "application/json"),
        ]
        for method, path, body, ctype in attempts:
            status, content_type, answer = send(port, method, path, body, ctype)
            assert 400 <= status < 500, (method, path, status, answer)
            assert content_type == "application/problem+json", (method, path, answer)
            assert json.loads(answer)["code"], (method, path, answer)
    assert tree(cluster.root.parent, data_dir) == before
    assert set(os.listdir(data_dir)) == inside_before
    assert cluster.procs[1].poll() is None
