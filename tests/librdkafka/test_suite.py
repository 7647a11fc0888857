"""librdkafka's own test suite against shoal: a short allowlisted subset by default, the
whole allowlist under ``soak`` (SHOAL_SOAK=1).

The runner is built once per machine (tests/librdkafka/build.py; .ci/run builds it before
the tests). Where it cannot be built here the tests skip with the reason; with
SHOAL_REQUIRE_LIBRDKAFKA=1 (CI) that skip is a failure instead.
"""

from __future__ import annotations

import pytest

from tests.harness import env_flag
from tests.librdkafka.build import BuildError, build
from tests.librdkafka.suite import read_allowlist, read_topics, run

#: Quick tests of the allowlist that between them produce (every compression codec),
#: consume, fetch in batches and balance a consumer group: seconds each once the cluster is up.
SHORT = ["0012_produce_consume", "0017_compression", "0022_consume_batch", "0035_api_version", "0056_balanced_group_mt"]


@pytest.fixture(scope="module")
def runner():
    try:
        return build(log=lambda line: None)
    except BuildError as exc:
        reason = f"librdkafka's test runner cannot be built here: {exc}"
        if env_flag("SHOAL_REQUIRE_LIBRDKAFKA"):
            pytest.fail(f"{reason} (SHOAL_REQUIRE_LIBRDKAFKA=1 makes this a failure, not a skip)", pytrace=False)
        pytest.skip(reason)


def check(names: list[str], timeout: float) -> None:
    results, _ = run(names, topics=read_topics(), timeout=timeout, log=lambda line: None)
    verdicts = {r.name: (r.state, r.reason) for r in results}
    assert set(verdicts) == set(names)
    failed = {name: v for name, v in verdicts.items() if v[0] != "PASSED"}
    assert not failed, f"allowlisted librdkafka tests did not pass against shoal: {failed}"


def test_short_allowlisted_subset_passes(runner):
    assert set(SHORT) <= set(read_allowlist())
    check(SHORT, timeout=120)


@pytest.mark.soak
def test_whole_allowlist_passes(runner):
    if not env_flag("SHOAL_SOAK"):
        pytest.skip("the whole allowlist takes many minutes: SHOAL_SOAK=1 runs it")
    check(read_allowlist(), timeout=300)
