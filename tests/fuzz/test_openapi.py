"""Schemathesis against the live OpenAPI document of a broker and of the gateway.

Every generated request (valid and invalid, paths fuzzed and paths pinned to a real
topic, partition and group often enough to reach the handlers) must get no 5xx, and
every answer must match the document: status codes, content types, headers and
bodies. Bounded for CI by ``SHOAL_FUZZ_EXAMPLES`` per operation (default 25);
``SHOAL_SEED`` changes the fixed seed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.security.procs import start_gateway

EXAMPLES = int(os.environ.get("SHOAL_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("SHOAL_SEED", "1")
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
])
CONFIG = """\
[dictionaries]
topics = { values = ["t"] }
groups = { values = ["g"] }
partitions = { values = [0, 1] }

[parameters]
"path.topic" = { dictionary = "topics", probability = 0.7 }
"path.group" = { dictionary = "groups", probability = 0.7 }
"path.partition" = { dictionary = "partitions", probability = 0.7 }
"""


def schemathesis(url: str, workdir: Path, *extra: str) -> int:
    """Run ``schemathesis run`` on ``url``/v1/openapi.json; return how many cases it ran (all passed)."""
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    proc = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run",
         f"{url}/v1/openapi.json", "--checks", CHECKS, "--max-examples", str(EXAMPLES), "--seed", SEED,
         "--workers", "1", "--generation-database", "none", "--request-timeout", "40", *extra],
        capture_output=True, text=True, timeout=300, cwd=workdir,
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    found = re.search(r"(\d+) generated, (\d+) passed", proc.stdout)
    assert found and found.group(1) == found.group(2), proc.stdout[-3000:]
    print(f"\nschemathesis {url}: {found.group(1)} cases, no 5xx, all answers as documented")
    return int(found.group(1))


def test_broker_answers_as_documented(cluster_factory):
    cluster = cluster_factory(1, {"t": 2})
    assert schemathesis(cluster.url(1), cluster.root) > 200
    assert cluster.procs[1].poll() is None


def test_gateway_answers_as_documented(cluster_factory):
    """PUT /v1/cluster is left out: the gateway installs a topology on the brokers it
    names, and fuzzed ones do not exist (503 BROKER_UNAVAILABLE is the right answer)."""
    cluster = cluster_factory(1, {"t": 2})
    proc, url = start_gateway(cluster.config_path, cluster.root)
    try:
        assert schemathesis(url, cluster.root, "--exclude-name", "PUT /v1/cluster") > 200
    finally:
        proc.stop()
