"""librdkafka's own test suite against a shoal cluster: which tests run, and what they say.

    .venv/bin/python -m tests.librdkafka.suite                 # every selected test
    .venv/bin/python -m tests.librdkafka.suite --allowlist     # the tests known to pass
    .venv/bin/python -m tests.librdkafka.suite 0012 0017 -v    # some tests, with their output
    .venv/bin/python -m tests.librdkafka.suite --discover      # refresh topics.txt

Each test runs alone in its own ``test-runner`` process (no socket emulation ``-E``, no
broker-less tests ``-L``, ``CI`` set so its timing checks allow a loaded machine; not the
quick mode ``-Q``, which skips most sub-tests and lets their tests pass having checked nothing), against a fresh three-broker cluster with Kafka listeners
(tests/harness.py). Its verdict is the runner's own JSON report; a runner that crashes or
overruns ``--timeout`` fails every test it was running.

Topics: shoal creates no topic on a Kafka client's request (no auto-creation, no
CreateTopics), so the cluster is started with every topic the tests name. The runner's
topic names are random, but ``TEST_SEED`` (one per test) with ``enable.random.seed=false``
makes them repeatable, and ``--discover`` records them in ``topics.txt`` from the
runner's own "Using topic" / "Creating topic" lines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import LocalCluster
from tests.librdkafka.build import build

HERE = Path(__file__).parent
ALLOWLIST = HERE / "allowlist.txt"
TOPICS = HERE / "topics.txt"
DEFAULT_PARTITIONS = 4  # the partition count of the suite's "default" scenario

#: Tests that need what shoal does not offer, by number, with the reason.
NEEDS = {
    "0007": "auto-creation of topics on produce",
    "0109": "auto-creation of topics (allow.auto.create.topics)",
    "0044": "CreatePartitions",
    "0045": "CreateTopics while subscribed (topics that appear under a regex subscription)",
    "0069": "CreatePartitions",
    "0112": "CreatePartitions",
    "0092": "AlterConfigs (a topic's message.format.version)",
    "0101": "fetching from followers (KIP-392: racks and a replica selector)",
    "0113": "DeleteTopics, CreatePartitions and a Java client (among its sub-tests)",
    "0081": "the Admin API (CreateTopics, DeleteTopics, CreatePartitions, configs, ACLs)",
    "0107": "DeleteTopics and CreateTopics",
    "0111": "CreateTopics of a subscribed topic",
    "0052": "kafka-topics.sh and ZooKeeper",
    "0077": "kafka-topics.sh and ZooKeeper",
    "0097": "SSL",
    "0115": "ACLs on Kafka's side (topic authorization errors)",
    "0119": "ACLs on Kafka's side (topic authorization errors)",
    "0126": "SASL/OAUTHBEARER with an OIDC server",
    "0135": "SASL",
    "0061": "transactions (one of its sub-tests)",
    "0098": "transactions (and a Java client)",
    "0103": "transactions",
    "0129": "transactions (aborted records)",
}
_TEST_ENTRY = re.compile(r"(\d{4}\w*),\s*([^,)]*)")


@dataclass
class Result:
    name: str
    state: str  # PASSED, FAILED or SKIPPED
    reason: str = ""
    seconds: float = 0.0


@dataclass
class Selection:
    run: list[str] = field(default_factory=list)  # test names to run
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why not run


def catalogue(runner: Path) -> list[tuple[str, str, str]]:
    """``(name, flags, rest)`` of every test in the runner's table (tests/test.c)."""
    text = (runner.parent / "test.c").read_text()
    table = text[text.index("struct test tests[] = {"):]
    entries = [(_TEST_ENTRY.match(chunk), chunk) for chunk in table.split("_TEST(")[1:]]
    return [(m[1], m[2].strip(), chunk) for m, chunk in entries if m]


def select(runner: Path) -> Selection:
    sel = Selection()
    for name, flags, rest in catalogue(runner):
        scenario = re.search(r'\.scenario\s*=\s*"([^"]*)"', rest)
        if "TEST_F_LOCAL" in flags:
            sel.skipped[name] = "local: needs no broker"
        elif re.search(r"TEST_F_KNOWN_ISSUE(?!_)", flags):
            sel.skipped[name] = "a known issue of librdkafka's (its runner skips it by default)"
        elif "TEST_F_MANUAL" in flags:
            sel.skipped[name] = "manual test"
        elif "TEST_F_SOCKEM" in flags:
            sel.skipped[name] = "socket emulation (left out by the suite's quick mode, -E)"
        elif scenario and "default" not in scenario[1].split(","):
            sel.skipped[name] = f"needs the {scenario[1]} broker scenario"
        elif name[:4] in NEEDS:
            sel.skipped[name] = "needs " + NEEDS[name[:4]]
        else:
            sel.run.append(name)
    return sel


def read_topics(path: Path = TOPICS) -> dict[str, tuple[int, str]]:
    """topic -> (partitions, the number of the test that names it)."""
    topics = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.strip() and not line.startswith("#"):
            name, partitions, number = line.split()
            topics[name] = (int(partitions), number)
    return topics


def write_topics(topics: dict[str, tuple[int, str]], path: Path = TOPICS) -> None:
    path.write_text(
        "# topic partitions test: the topics librdkafka's tests name (python -m tests.librdkafka.suite --discover)\n"
        + "".join(f"{t} {p} {n}\n" for t, (p, n) in sorted(topics.items()))
    )


def runner_conf(bootstrap: str) -> str:
    return "\n".join([
        f"bootstrap.servers={bootstrap}",
        "enable.random.seed=false",  # keep rand() on TEST_SEED: topic names repeat run to run
        "test.timeout.multiplier=3",
        "",
    ])  # fmt: skip


_USING = re.compile(r'(?:Using topic|Creating topic) "([^"]+)"(?: \(partitions=(\d+))?|Message delivery \(to (\S+) \[')
#: Names a test needs not to exist, or that it only uses as a prefix of its topics' names.
_ABSENT = re.compile(r"_do_nonexist_commit$|^rdkafkatest_regex_subscribe_[A-Za-z]+_\d{4}_[^_]+$")
_SKIP = re.compile(r"\[(\d{4}\w*)\s*/\s*[\d.]+s\] .*?SKIPPING TEST: (.*)")
_FAIL = re.compile(r'### Test "(\d{4}\w*)(?: \([^"]*\))?" failed at ([^\n]*?) at [^\n]*###\n([^\n]*)')
_ANSI = re.compile(r"\x1b\[[0-9;]*m|\x1b\(B")


@dataclass
class Outcome:
    results: list[Result]
    topics: dict[str, int | None]
    output: str


def run_one(runner: Path, number: str, names: list[str], bootstrap: str, workdir: Path, timeout: float) -> Outcome:
    """Run test ``number`` (all its selected ``names``) in one runner process."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "test.conf"
    conf.write_text(runner_conf(bootstrap))
    report = workdir / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST", "RDKAFKA_", "SUBTESTS"))}
    env.update(TESTS=number, TEST_SEED=str(1000 + int(number)), RDKAFKA_TEST_CONF=str(conf),
               TEST_REPORT=str(report), CI="true")  # fmt: skip
    started = time.monotonic()
    try:
        # In the runner's directory: some tests read ../src/ files of the source tree.
        proc = subprocess.run([str(runner), "-E", "-L"], cwd=runner.parent, env=env, capture_output=True,
                              timeout=timeout)  # fmt: skip
        output, crashed = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace"), None
        if proc.returncode < 0:
            crashed = f"runner killed by signal {-proc.returncode}"
    except subprocess.TimeoutExpired as exc:
        output = ((exc.stdout or b"") + (exc.stderr or b"")).decode(errors="replace")
        crashed = f"runner overran {timeout:.0f}s"
    elapsed = time.monotonic() - started
    output = _ANSI.sub("", output)
    topics: dict[str, int | None] = {}  # None: named without a partition count
    for m in _USING.finditer(output):
        name = m[1] or m[3]
        if m[2] is not None or name not in topics:
            topics[name] = int(m[2]) if m[2] else None
    skips = {m[1]: m[2].strip() for m in _SKIP.finditer(output)}
    fails = {m[1]: f"{m[3].strip()} ({m[2]})" for m in _FAIL.finditer(output)}
    states = {}
    if report.exists():
        try:
            states = json.loads(report.read_text(errors="replace"))["tests"]
        except (ValueError, KeyError):
            states = {}
    results = []
    for name in names:
        entry = states.get(name, {})
        state, secs = entry.get("state"), float(entry.get("duration", elapsed))
        if state == "PASSED":
            results.append(Result(name, "PASSED", "", secs))
        elif state == "SKIPPED" and name in skips:
            results.append(Result(name, "SKIPPED", skips[name], secs))
        elif state == "FAILED" or name in fails:
            results.append(Result(name, "FAILED", fails.get(name, crashed or "failed"), secs))
        else:
            results.append(Result(name, "FAILED", crashed or f"no verdict ({state or 'no report'})", elapsed))
    return Outcome(results, topics, output)


def run(names: list[str], *, topics: dict[str, tuple[int, str]], timeout: float = 300, jobs: int = 1,
        verbose: bool = False, logs: Path | None = None, log=print,
        ) -> tuple[list[Result], dict[str, tuple[int | None, str]]]:  # fmt: skip
    """Start a cluster with the ``topics`` of the tests ``names``, run them; their results
    and every topic they named (with its partition count when they created it)."""
    runner = build(log=log)
    by_number: dict[str, list[str]] = {}
    for name in names:
        by_number.setdefault(name[:4], []).append(name)
    wanted = {t: p for t, (p, number) in topics.items() if number in by_number}
    with tempfile.TemporaryDirectory(prefix="shoal-librdkafka-") as tmp:
        root = Path(tmp)
        (root / "cluster").mkdir()
        cluster = LocalCluster(root / "cluster", 3, wanted, name="librdkafka", kafka=True)
        results: list[Result] = []
        named: dict[str, tuple[int | None, str]] = {}
        try:
            cluster.start(timeout=120)

            def one(number: str) -> Outcome:
                out = run_one(runner, number, by_number[number], cluster.bootstrap, root / number, timeout)
                for r in out.results:
                    log(f"{r.name:45s} {r.state:7s} {r.seconds:7.1f}s  {r.reason}")
                if verbose:
                    log(out.output)
                if logs is not None:
                    logs.mkdir(parents=True, exist_ok=True)
                    (logs / f"{number}.log").write_text(out.output)
                return out

            with ThreadPoolExecutor(max(1, jobs)) as pool:
                for number, out in zip(sorted(by_number), pool.map(one, sorted(by_number))):
                    results.extend(out.results)
                    named.update({t: (p, number) for t, p in out.topics.items()})
        finally:
            cluster.stop()
            for stats in runner.parent.glob("stats_*.json"):  # written by tests into their directory
                stats.unlink(missing_ok=True)
    return results, named


def summary(results: list[Result], skipped: dict[str, str]) -> str:
    counts = Counter(r.state for r in results)
    reasons = Counter(skipped.values()) + Counter(r.reason for r in results if r.state == "SKIPPED")
    lines = [f"{len(results)} run: {counts['PASSED']} passed, {counts['FAILED']} failed, "
             f"{counts['SKIPPED']} skipped by the runner; {len(skipped)} not run"]  # fmt: skip
    lines += [f"  {n:3d} {reason}" for reason, n in reasons.most_common()]
    lines.append(f"{counts['PASSED']} passed, {counts['FAILED']} failed, {counts['SKIPPED'] + len(skipped)} skipped")
    return "\n".join(lines)


def read_allowlist(path: Path = ALLOWLIST) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.librdkafka.suite", description=__doc__.split("\n")[0])
    parser.add_argument("tests", nargs="*", help="test numbers or names (default: every selected test)")
    parser.add_argument("--allowlist", action="store_true", help="run the tests of allowlist.txt")
    parser.add_argument("--discover", action="store_true", help="add the topics the tests name to topics.txt")
    parser.add_argument("--json", type=Path, help="write every result to this file")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per test number (default 300)")
    parser.add_argument("--jobs", type=int, default=1, help="test runners at once (default 1)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each runner's output")
    parser.add_argument("--logs", type=Path, help="write each runner's output to DIR/NNNN.log")
    args = parser.parse_args(argv)
    runner = build()
    sel = select(runner)
    names = read_allowlist() if args.allowlist else sel.run
    if args.tests:
        names = [n for n in names if any(n.startswith(t) for t in args.tests)]
    skipped = {} if (args.allowlist or args.tests) else sel.skipped
    topics = read_topics()
    results, named = run(names, topics=topics, timeout=args.timeout, jobs=args.jobs, verbose=args.verbose,
                         logs=args.logs)  # fmt: skip
    if args.discover:
        merged = dict(topics)
        for t, (p, number) in named.items():
            if re.fullmatch(r"[A-Za-z0-9._-]{1,249}", t) and not _ABSENT.search(t):
                known = merged.get(t, (DEFAULT_PARTITIONS, number))[0]
                merged[t] = (p if p is not None else known, number)  # a created count wins
        write_topics(merged)
        print(f"topics.txt: {len(set(merged) - set(topics))} new, {len(merged)} in all")
    if args.json:
        args.json.write_text(json.dumps({"results": [r.__dict__ for r in results], "not_run": skipped}, indent=1))
    print(summary(results, skipped))
    return 1 if any(r.state == "FAILED" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
