"""``python -m bench.profile``: where the CPU goes in the broker's append and fetch paths and in the client.

Runs each workload against a fresh single broker while py-spy samples the broker
process (and, for the client workloads, this process too), then prints, per process,
how busy it was and the functions and modules that held the CPU (self time: the
innermost Python frame of each sample; time in C code counts for the Python function
that called it). py-spy attaches with ptrace: run as root or with ptrace allowed.

Workloads:

    append       raw produce of pre-encoded batches (--batch records each)
    append-small raw produce of 10-record batches: the per-request cost
    fetch        raw consume, reading frames by their headers only
    produce      AsyncProducer through shoal.router.cli.bench_driver (client + broker)
    consume      AsyncConsumer.getmany(), a Record for every record (client + broker)
    replicated   AsyncProducer with acks=all to a partition of factor 3 on three brokers
                 and an etcd (client, leader and one follower)
    idle         a broker owning --partitions partitions after one record each, at rest

Example::

    python -m bench.profile --records 500000 --only append,fetch --top 12
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from shoal.router.cli import bench_driver as perf
from shoal.router.server.logs import configure_logging

from .procs import which
from .resources import touch_all
from .shoal_broker import ShoalBroker
from .shoal_systems import ShoalRaw

WORKLOADS = ("append", "append-small", "fetch", "produce", "consume", "replicated", "idle")
RATE = 250  # samples per second


class Sampler:
    """py-spy recording one process into a raw (collapsed stacks) file until ``stop()``;
    with ``svg``, a second py-spy (at half the rate) draws a flame graph there too."""

    def __init__(self, pid: int, out: Path, svg: Path | None = None) -> None:
        binary = which("py-spy", str(Path(sys.executable).parent))
        if binary is None:
            raise SystemExit("py-spy not found: pip install -e '.[bench]'")
        self.out = out
        self.procs = [self._spawn(binary, pid, "raw", out, RATE)]
        if svg is not None:
            self.procs.append(self._spawn(binary, pid, "flamegraph", svg, RATE // 2))
        self.started = time.monotonic()

    @staticmethod
    def _spawn(binary: str, pid: int, fmt: str, out: Path, rate: int) -> subprocess.Popen:
        proc = subprocess.Popen(
            [binary, "record", "-p", str(pid), "-f", fmt, "-o", str(out), "-r", str(rate), "--nolineno",
             "--nonblocking"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        proc.stdout.readline()  # "Sampling process ..." once attached
        return proc

    def stop(self) -> Profile:
        seconds = time.monotonic() - self.started
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            _, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}")
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no {self.out}")
        return Profile.parse(self.out.read_text(), seconds)


@dataclass
class Profile:
    """Busy samples of one process, by innermost function and by module."""

    seconds: float
    samples: int
    functions: Counter
    modules: Counter

    @classmethod
    def parse(cls, text: str, seconds: float) -> Profile:
        functions: Counter = Counter()
        modules: Counter = Counter()
        total = 0
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            n = int(count)
            leaf = stack.rsplit(";", 1)[-1]
            total += n
            functions[leaf] += n
            modules[leaf.rpartition("(")[2].rstrip(")")] += n
        return cls(seconds, total, functions, modules)

    def render(self, label: str, top: int) -> str:
        busy = 100 * self.samples / (RATE * self.seconds) if self.seconds else 0
        lines = [f"  {label}: busy {busy:.0f}% of {self.seconds:.1f} s ({self.samples} samples)"]
        for title, counter in (("functions", self.functions), ("modules", self.modules)):
            lines.append(f"    top {title} (self time, % of busy samples):")
            for name, n in counter.most_common(top):
                lines.append(f"      {100 * n / max(1, self.samples):5.1f}%  {name}")
        return "\n".join(lines)


async def _workload(name: str, url: str, args: argparse.Namespace) -> perf.BenchResult:
    value = os.urandom(100)
    raw = ShoalRaw(url)
    await raw.open()
    try:
        if name == "append":
            return await raw.produce("append", records=args.records, batch=args.batch, value=value)
        if name == "append-small":
            return await raw.produce("small", records=args.records, batch=10, value=value, max_seconds=args.seconds)
        if name == "fetch":
            return await raw.consume("append", records=args.records)
        if name == "produce":
            return await perf.produce(url, "client", records=args.records)
        return await perf.consume(url, "client", records=args.records, idle_timeout=5, records_api=True)
    finally:
        await raw.close()


def run(args: argparse.Namespace) -> str:
    out = [f"profile: {args.records:,} records of 100 bytes, batch {args.batch}, py-spy at {RATE} Hz"]
    tmp = Path(tempfile.mkdtemp(prefix="shoal-profile-"))
    steps = [w for w in args.only if w not in ("idle", "replicated")]
    # The readers need something to read: their writer runs first, unsampled if not asked for.
    for reader, writer in (("fetch", "append"), ("consume", "produce")):
        if reader in steps and writer not in steps:
            steps.insert(steps.index(reader), f"{writer}-unsampled")
    try:
        _profile(args, steps, tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return "\n".join(out)


def _profile(args: argparse.Namespace, steps: list[str], tmp: Path, out: list[str]) -> None:
    if steps:
        with ShoalBroker({"append": 1, "small": 1, "client": 1}, flush=args.flush) as broker:
            for name in steps:
                if name.endswith("-unsampled"):
                    asyncio.run(_workload(name.removesuffix("-unsampled"), broker.url, args))
                    continue
                server = Sampler(broker.proc.pid, tmp / f"{name}-broker.txt", _svg(args, name, "broker"))
                client = Sampler(os.getpid(), tmp / f"{name}-client.txt", _svg(args, name, "client"))
                result = asyncio.run(_workload(name, broker.url, args))
                profiles = [("broker", server.stop()), ("client (this process)", client.stop())]
                out.append(f"\n{name}: {result.records:,} records, {result.records_per_s:,.0f} records/s")
                out.extend(p.render(label, args.top) for label, p in profiles)
    if "replicated" in args.only:
        _profile_replicated(args, tmp, out)
    if "idle" in args.only:
        with ShoalBroker({"many": args.partitions}, flush=args.flush) as broker:
            asyncio.run(touch_all(broker.url, "many", args.partitions))
            server = Sampler(broker.proc.pid, tmp / "idle-broker.txt", _svg(args, "idle", "broker"))
            time.sleep(args.seconds)  # the interval being measured
            out.append(f"\nidle: {args.partitions:,} partitions, one record each, then {args.seconds:g} s at rest")
            out.append(server.stop().render("broker", args.top))


def _svg(args: argparse.Namespace, workload: str, process: str) -> Path | None:
    """Where the flame graph of ``process`` on ``workload`` goes (None: no SVGs asked for)."""
    if args.svg_dir is None:
        return None
    args.svg_dir.mkdir(parents=True, exist_ok=True)
    return args.svg_dir / f"flame-{workload}-{process}.svg"


def _profile_replicated(args: argparse.Namespace, tmp: Path, out: list[str]) -> None:
    from .cluster import ShoalCluster

    topics = {"r3": {"partitions": 1, "replication_factor": 3, "min_insync_replicas": 2}}
    with ShoalCluster(3, topics, flush=args.flush) as cluster:
        cluster.wait_settled()
        leader = cluster.leader("r3")
        follower = next(i for i in cluster.brokers if i != leader)
        samplers = [
            ("leader broker", Sampler(cluster.brokers[leader].proc.pid, tmp / "rep-leader.txt",
                                      _svg(args, "replicated", "leader"))),
            ("follower broker", Sampler(cluster.brokers[follower].proc.pid, tmp / "rep-follower.txt",
                                        _svg(args, "replicated", "follower"))),
            ("client (this process)", Sampler(os.getpid(), tmp / "rep-client.txt", _svg(args, "replicated", "client"))),
        ]  # fmt: skip
        result = asyncio.run(perf.produce(cluster.urls, "r3", records=args.records, linger_ms=5, acks="all"))
        profiles = [(label, s.stop()) for label, s in samplers]
    out.append(f"\nreplicated (acks=all, factor 3): {result.records:,} records, {result.records_per_s:,.0f} records/s")
    out.extend(p.render(label, args.top) for label, p in profiles)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=1_000_000, help="records per workload (default 1,000,000)")
    p.add_argument("--batch", type=int, default=1000, help="records per batch of the append workload (default 1000)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of append-small and idle (default 5)")
    p.add_argument("--partitions", type=int, default=10_000, help="partitions of the idle workload (default 10,000)")
    p.add_argument("--flush", default="interval", choices=("always", "interval", "never"), help="flush policy")
    p.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--top", type=int, default=15, help="rows per table (default 15)")
    p.add_argument("--svg-dir", type=Path, help="also draw a flame graph per process and workload here (e.g. docs/img)")
    args = p.parse_args(argv)
    args.only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = sorted(set(args.only) - set(WORKLOADS))
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    configure_logging("warning")
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
