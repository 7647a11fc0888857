"""``python -m bench``: shoal vs Redis Streams vs NATS JetStream, on this machine, in one command.

Starts a fresh single shoal broker, redis-server and nats-server on free loopback
ports (installing the Debian packages when missing, skipping a peer with the reason
when it cannot be had), runs the same workloads against each (``bench.workloads``),
stops every server it started, and writes ``<out>/<timestamp>.json``,
``<out>/latest.json`` and PNG plots. Then the resource runs on shoal alone: many
partitions at rest, restart after kill -9 with a large log.

Systems run one after another, so the others sit idle while one is measured.

Examples::

    python -m bench                        # the full report run (minutes)
    python -m bench --quick                # 20,000 records, no sweep: the CI smoke run
    python -m bench --systems shoal,redis --records 200000 --restart-gb 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from shoal.router.cli import bench_driver as perf
from shoal.router.server.logs import configure_logging

from . import plots, report
from .peers import NatsServer, RedisServer, ensure_binary
from .procs import ServerError, ServerProcess, which
from .redis_streams import redis_benchmark
from .resources import partitions_run, restart_run
from .shoal_broker import ShoalBroker
from .workloads import System

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
SHOALS = ("shoal", "shoal-bulk", "shoal-raw", "confluent-kafka")  # one broker serves them all (confluent-kafka: its Kafka listener)
SYSTEMS = (*SHOALS, "redis", "nats")
SWEEP = (1, 10, 100, 1000, 10_000)
WORKLOADS = ("produce", "latency", *(f"sweep-{b}" for b in SWEEP))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 20,000 records, 1 s latency run, no sweep, 500 partitions, 20 MB restart")  # fmt: skip
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--records", type=int, help="records per produce/consume run (default 1,000,000)")
    p.add_argument("--record-size", type=int, default=100, help="value bytes per record (default 100)")
    p.add_argument("--batch", type=int, default=1000, help="batch size of the main produce run (default 1000)")
    p.add_argument("--sweep", default=",".join(map(str, SWEEP)),
                   help="batch sizes of the throughput sweep; empty for none (default 1,10,100,1000,10000)")  # fmt: skip
    p.add_argument("--sweep-records", type=int, default=200_000, help="most records per sweep point (default 200,000)")
    p.add_argument("--sweep-seconds", type=float, default=5.0, help="most seconds per sweep point (default 5)")
    p.add_argument("--raw-in-flight", type=int, default=1,
                   help="concurrent requests of shoal-raw's produce runs (default 1, as the client per partition)")  # fmt: skip
    p.add_argument("--latency-rate", type=int, default=10_000, help="records/s of the latency run (default 10,000)")
    p.add_argument("--latency-seconds", type=float, help="length of the latency run (default 10)")
    p.add_argument("--flush", default="interval", choices=("always", "interval", "never"),
                   help="shoal flush policy (default interval, comparable to Redis appendfsync everysec)")  # fmt: skip
    p.add_argument("--flush-interval-ms", type=int, default=1000, help="shoal fsync period under interval (default 1000)")
    p.add_argument("--partitions", type=int, help="partitions on one broker for the resource run (default 10,000)")
    p.add_argument("--client-path-runs", type=int,
                   help="runs of each per-record client path against the interpreter's floor; 0 skips them (default 1)")  # fmt: skip
    p.add_argument("--client-paths-before", metavar="REV",
                   help="also time the client paths of git revision REV (its own tree and venv, this harness), "
                        "for a before/after table")  # fmt: skip
    p.add_argument("--replicated-partitions", type=int,
                   help="partitions at factor 3 on three brokers for the resource run; 0 skips it (default 10,000)")  # fmt: skip
    p.add_argument("--replicated-records", type=int,
                   help="records per throughput run of the replicated path; 0 skips it (default 300,000)")  # fmt: skip
    p.add_argument("--replicated-rates", default="1000,10000,50000",
                   help="fixed rates (records/s) of the replicated latency runs (default 1000,10000,50000)")  # fmt: skip
    p.add_argument("--idle-seconds", type=float, help="idle CPU measuring interval (default 10)")
    p.add_argument("--restart-gb", type=float, help="log size for the kill -9 restart run; 0 skips it (default 5)")
    p.add_argument("--step-timeout", type=float, default=300,
                   help="seconds after which one workload is abandoned and recorded as an error (default 300)")  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results dir (default bench/results)")
    p.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img", help="plots dir (default docs/img)")
    p.add_argument("--no-plots", action="store_true", help="write no PNGs")
    p.add_argument("--no-install", action="store_true", help="skip a missing peer instead of apt-get installing it")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)

    quick = args.quick
    defaults = {
        "records": 20_000 if quick else 1_000_000,
        "latency_seconds": 1.0 if quick else 10.0,
        "partitions": 500 if quick else 10_000,
        "idle_seconds": 2.0 if quick else 10.0,
        "restart_gb": 0.02 if quick else 5.0,
        "replicated_partitions": 0 if quick else 10_000,
        "replicated_records": 0 if quick else 300_000,
        "client_path_runs": 0 if quick else 1,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if quick:
        args.sweep = ""
    try:
        args.replicated_rates = [int(r) for r in args.replicated_rates.split(",") if r.strip()]
    except ValueError:
        p.error(f"--replicated-rates takes comma-separated integers, not {args.replicated_rates!r}")
    try:
        args.sweep = [int(b) for b in args.sweep.split(",") if b.strip()]
    except ValueError:
        p.error(f"--sweep takes comma-separated integers, not {args.sweep!r}")
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        p.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    for name in ("records", "record_size", "batch", "latency_rate", "partitions", "raw_in_flight"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if any(b < 1 for b in args.sweep):
        p.error("--sweep batch sizes must be at least 1")
    return args


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024**2, 1),
        "cpu_model": model or platform.processor() or "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def find_peers(wanted: list[str], *, install: bool) -> tuple[dict[str, str], dict[str, str]]:
    """Binaries of the wanted peers, and the reason for each peer that must be skipped."""
    binaries, skipped = {}, {}
    if "confluent-kafka" in wanted:
        try:
            __import__("confluent_kafka")
        except ImportError:
            skipped["confluent-kafka"] = "Python package 'confluent_kafka' missing: pip install -e '.[dev]'"
    for name, binary, module in (("redis", "redis-server", "redis"), ("nats", "nats-server", "nats")):
        if name not in wanted:
            continue
        try:
            __import__(module)
        except ImportError:
            skipped[name] = f"Python package {module!r} missing: pip install -e '.[bench]'"
            continue
        path, reason = ensure_binary(binary, install=install)
        if path:
            binaries[name] = path
        else:
            skipped[name] = reason
    if "redis" in binaries:
        binaries["redis-benchmark"] = which("redis-benchmark")
    return binaries, skipped


def _driver(name: str, server, args: argparse.Namespace) -> System:
    if name == "redis":
        from .redis_streams import RedisStreams

        return RedisStreams(server.url)
    if name == "nats":
        from .nats_jetstream import NatsJetStream

        return NatsJetStream(server.url)
    from .shoal_systems import ShoalBulk, ShoalClient, ShoalRaw

    if name == "confluent-kafka":
        from .kafka_clients import ConfluentKafka

        return ConfluentKafka(f"127.0.0.1:{server.kafka_port}")
    if name == "shoal":
        return ShoalClient(server.url)
    if name == "shoal-bulk":
        return ShoalBulk(server.url)
    return ShoalRaw(server.url, in_flight=args.raw_in_flight)


async def run_system(driver: System, server: ServerProcess, args: argparse.Namespace) -> dict:
    """Every workload against one system; a failing workload is recorded, not fatal.

    Each result also says how busy the server and this process (the client) were,
    in percent of one core: which side bounds the run.
    """
    value = os.urandom(args.record_size)
    out: dict = {}
    prefix = driver.name

    async def step(label: str, coro) -> dict | None:
        t0, cpu0, server0 = time.perf_counter(), time.process_time(), server.cpu_seconds()
        try:
            async with asyncio.timeout(args.step_timeout):
                result = await coro
        except Exception as exc:  # noqa: BLE001 - one broken workload must not hide the others
            log.exception("%s: %s failed", driver.name, label)
            out.setdefault("errors", {})[label] = f"{type(exc).__name__}: {exc}"
            return None
        wall = time.perf_counter() - t0
        log.info("%s %-9s %8s records  %10.0f rec/s  %7.2f MB/s  (%.1fs)", driver.name, label,
                 f"{result.records:,}", result.records_per_s, result.mb_per_s, wall)  # fmt: skip
        return {
            **result.to_dict(),
            "server_cpu_percent": round(100 * (server.cpu_seconds() - server0) / wall, 1),
            "client_cpu_percent": round(100 * (time.process_time() - cpu0) / wall, 1),
        }

    await driver.open()
    try:
        produced = await step("produce", driver.produce(f"{prefix}-produce", records=args.records,
                                                        batch=args.batch, value=value))  # fmt: skip
        if produced:
            out["produce"] = produced
            consumed = await step("consume", driver.consume(f"{prefix}-produce", records=produced["records"]))
            if consumed:
                out["consume"] = consumed
        latency = await step("latency", driver.latency(f"{prefix}-latency", rate=args.latency_rate,
                                                       duration=args.latency_seconds, value=value))  # fmt: skip
        if latency:
            out["latency"] = latency
        sweep = []
        for batch in args.sweep:
            point = await step(f"batch={batch}", driver.produce(
                f"{prefix}-sweep-{batch}", records=args.sweep_records, batch=batch, value=value,
                max_seconds=args.sweep_seconds))  # fmt: skip
            if point:
                sweep.append({"batch": batch, **point})
        if sweep:
            out["sweep"] = sweep
    finally:
        await driver.close()
    return out


def run_comparison(args: argparse.Namespace, binaries: dict[str, str]) -> dict[str, dict]:
    """Start the servers, run every system, stop the servers (whatever happens)."""
    shoal_topics = {f"{s}-{w}": 1 for s in SHOALS for w in WORKLOADS}
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in args.systems:
            try:
                if name in SHOALS:
                    if "shoal" not in servers:
                        servers["shoal"] = stack.enter_context(ShoalBroker(
                            shoal_topics, flush=args.flush, flush_interval_ms=args.flush_interval_ms,
                            kafka="confluent-kafka" in args.systems))  # fmt: skip
                    servers[name] = servers["shoal"]
                elif name in binaries:
                    servers[name] = stack.enter_context((RedisServer if name == "redis" else NatsServer)(binaries[name]))
            except ServerError as exc:
                results[name] = {"errors": {"start": str(exc)}}
        for name in args.systems:
            if name not in servers:
                continue
            # The harness's own long-lived objects (imports, servers) leave the collector's
            # view, so full collections during a run scan only what the workload made.
            gc.collect()
            gc.freeze()
            with asyncio.Runner(loop_factory=perf.new_event_loop) as runner:
                results[name] = runner.run(run_system(_driver(name, servers[name], args), servers[name], args))
            results[name]["server_rss_mib"] = round(servers[name].rss_bytes() / 1024**2, 1)
            if name == "redis" and binaries.get("redis-benchmark"):
                results[name]["redis_benchmark"] = redis_benchmark(
                    binaries["redis-benchmark"], servers[name].port, records=args.records, pipeline=args.batch,
                    record_size=args.record_size)  # fmt: skip
    return results


def run_resources(args: argparse.Namespace) -> dict:
    broker_kw = {"flush": args.flush, "flush_interval_ms": args.flush_interval_ms}
    out: dict = {}
    try:
        out["partitions"] = partitions_run(args.partitions, args.idle_seconds, **broker_kw)
    except Exception as exc:  # noqa: BLE001
        log.exception("partitions run failed")
        out["partitions"] = {"error": f"{type(exc).__name__}: {exc}"}
    if args.restart_gb > 0:
        try:
            out["restart"] = restart_run(int(args.restart_gb * 1024**3), **broker_kw)
        except Exception as exc:  # noqa: BLE001
            log.exception("restart run failed")
            out["restart"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def run_replicated(args: argparse.Namespace) -> dict:
    """The replicated path and the 10,000-partition cluster (etcd and three brokers each)."""
    from .replicated import many_partitions_run, replicated_run

    if not (args.replicated_records or args.replicated_partitions):
        return {}
    if which("etcd") is None:
        return {"skipped": "etcd not installed: apt-get install etcd-server"}
    out: dict = {}
    if args.replicated_records:
        try:
            out["paths"] = replicated_run(
                records=args.replicated_records, rates=args.replicated_rates, seconds=args.latency_seconds,
                failover_rate=args.latency_rate, failover_seconds=(5.0, 15.0), step_timeout=args.step_timeout)  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            log.exception("replicated run failed")
            out["paths"] = {"error": f"{type(exc).__name__}: {exc}"}
    if args.replicated_partitions:
        try:
            out["partitions"] = many_partitions_run(args.replicated_partitions, args.idle_seconds)
        except Exception as exc:  # noqa: BLE001
            log.exception("replicated partitions run failed")
            out["partitions"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every server is stopped and its temp dir removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    configure_logging("debug" if args.verbose else "info")
    started = time.time()
    load = os.getloadavg()
    if load[0] > 0.5:
        log.warning("load average is %.2f before the run: other work on this machine will skew the numbers", load[0])
    binaries, skipped = find_peers(args.systems, install=not args.no_install)
    for name, reason in skipped.items():
        log.warning("skipping %s: %s", name, reason)
    args.systems = [s for s in args.systems if s not in skipped]

    client_paths = None
    if args.client_path_runs:
        from .client_paths import measure

        client_paths = measure(args.records, args.client_path_runs, echo=True)
    client_paths_before = None
    if args.client_path_runs and args.client_paths_before:
        from . import before

        try:
            client_paths_before = before.measure(args.client_paths_before, args.records, args.client_path_runs)
        except (OSError, subprocess.CalledProcessError) as exc:
            log.error("could not time the client paths of %s: %s", args.client_paths_before, exc)
            client_paths_before = {"revision": args.client_paths_before, "error": str(exc)}
    systems = run_comparison(args, binaries)
    replicated = run_replicated(args)
    resources = run_resources(args)

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    doc = {
        "schema": 1,
        "timestamp": stamp,
        "wall_seconds": round(time.time() - started, 1),
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {**machine(), "load_average_before": [round(x, 2) for x in load]},
        "versions": {
            "shoal": _dist_version("shoal"),
            "redis_server": _version([binaries["redis"], "--version"]) if "redis" in binaries else None,
            "nats_server": _version([binaries["nats"], "--version"]) if "nats" in binaries else None,
            "redis_py": _dist_version("redis"),
            "hiredis": _dist_version("hiredis"),
            "nats_py": _dist_version("nats-py"),
            "aiohttp": _dist_version("aiohttp"),
        },
        "config": {
            "quick": args.quick,
            "records": args.records,
            "record_size": args.record_size,
            "batch": args.batch,
            "raw_in_flight": args.raw_in_flight,
            "sweep": args.sweep,
            "sweep_records": args.sweep_records,
            "sweep_seconds": args.sweep_seconds,
            "latency_rate": args.latency_rate,
            "latency_seconds": args.latency_seconds,
            "shoal_flush": args.flush,
            "shoal_flush_interval_ms": args.flush_interval_ms,
        },
        "systems": systems,
        "skipped": skipped,
        "ratios": report.ratios(systems),
        "client_paths": client_paths,
        "client_paths_before": client_paths_before,
        "replicated": replicated,
        "resources": resources,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2) + "\n"
    (args.out / f"{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    log.info("wrote %s and latest.json", args.out / f"{stamp}.json")
    if not args.no_plots:
        try:
            plots.write_plots(doc, args.img_dir)
        except ImportError as exc:
            log.warning("no plots: %s (pip install -e '.[bench]')", exc)
    print(report.markdown(doc))
    return 0
