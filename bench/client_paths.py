"""``python -m bench.client_paths``: the client's per-record paths against the interpreter's floor.

Measures, on one fresh broker (the project's default flush policy), the per-record
calls an application makes: ``await send()`` without keys and with 16-byte keys (a
distinct key per record, made before the clock starts), at ``linger_ms=5`` and at the
client's default, and ``getmany()`` looking at every ``Record`` (without and with
``pause_gc``). Each path runs
``--runs`` times; every line carries the load average, since the machine may be shared.
First it times the bare floor of the interpreter (an ``await`` of a trivial
coroutine, a list append, a dict store, building a 4-tuple) and reports each path as
a multiple of the await, the one thing every per-record call must do: by the client
process's CPU time per record, which a shared machine disturbs less than the
wall-clock rate (also printed).

Example::

    python -m bench.client_paths --records 1000000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import time
from operator import attrgetter
from pathlib import Path
from timeit import timeit

from shoal.client.consumer import AsyncConsumer
from shoal.client.producer import AsyncProducer
from shoal.router.cli import bench_driver as perf

from .shoal_broker import ShoalBroker

PARTITIONS = 8
VALUE_BYTES = 100
KEY_BYTES = 16
_VALUE = attrgetter("value")


def _run(coro):
    with asyncio.Runner(loop_factory=perf.new_event_loop) as runner:
        return runner.run(coro)


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def floor(n: int = 1_000_000) -> dict[str, float]:
    """Microseconds per operation of the bare interpreter, in a loop like the paths'."""

    async def trivial(x):
        return x

    async def awaits() -> float:
        start = time.perf_counter()
        for i in range(n):
            await trivial(i)
        return time.perf_counter() - start

    seconds = min(_run(awaits()) for _ in range(3))
    out = {"await trivial coroutine": seconds / n * 1e6}
    setup = "items = []; d = {}; a = b'k'; b = b'v'"
    for name, stmt in (
        ("list append", "items.append(a)"),
        ("dict store", "d[a] = b"),
        ("build 4-tuple", "(1, a, b, None)"),
    ):
        out[name] = min(timeit(stmt, setup, number=n) for _ in range(3)) / n * 1e6
    return out


async def produce(url: str, topic: str, records: int, linger_ms: float | None, keyed: bool) -> tuple[float, float]:
    """Records/s of ``await send()`` for ``records`` records until all are acknowledged,
    and this process's CPU seconds meanwhile."""
    value = os.urandom(VALUE_BYTES)
    keys = [os.urandom(KEY_BYTES) for _ in range(records)] if keyed else None
    options = {} if linger_ms is None else {"linger_ms": linger_ms}
    async with AsyncProducer(url, **options) as producer:
        send = producer.send
        await producer.send_and_wait(topic, value)  # topology read, connection open
        start, cpu = time.perf_counter(), time.process_time()
        if keys is None:
            for _ in range(records):
                await send(topic, value)
        else:
            for key in keys:
                await send(topic, value, key=key)
        await producer.flush()
        return records / (time.perf_counter() - start), time.process_time() - cpu


async def consume(url: str, topic: str, records: int, pause_gc: bool) -> tuple[float, float]:
    """Records/s of ``getmany()`` reading ``records`` records, the value of each
    ``Record`` read (in C, as ``shoal bench consume --records-api`` does), and this
    process's CPU seconds meanwhile."""
    async with AsyncConsumer(topic, bootstrap=url, **({"pause_gc": True} if pause_gc else {})) as consumer:
        await consumer.start()
        got = 0
        start, cpu = time.perf_counter(), time.process_time()
        while got < records:
            for batch in (await consumer.getmany(timeout_ms=1000, max_records=100_000)).values():
                got += len(batch)
                sum(map(len, map(_VALUE, batch)))
        return got / (time.perf_counter() - start), time.process_time() - cpu


def measure(records: int, runs: int, echo: bool = False) -> dict:
    """The floor, then every path ``runs`` times against one fresh broker (see the module doc).

    Returns ``{"floor_ns": {name: ns}, "paths": [{"path", "run", "records_per_s",
    "cpu_us_per_record", "x_floor", "load"}]}``; ``echo`` prints each line as it comes.
    """
    base = floor()
    out: dict = {"floor_ns": {name: round(us * 1000, 1) for name, us in base.items()}, "paths": []}
    if echo:
        for name, us in base.items():
            print(f"floor  {name:<24} {us * 1000:7.1f} ns   load {_loadavg()}", flush=True)
    unit = base["await trivial coroutine"]

    def report(name: str, run: int, rate: float, cpu: float) -> None:
        per_record = cpu / records * 1e6
        row = {"path": name, "run": run + 1, "records_per_s": round(rate), "cpu_us_per_record": round(per_record, 3),
               "x_floor": round(per_record / unit, 1), "load": os.getloadavg()[0]}  # fmt: skip
        out["paths"].append(row)
        if echo:
            print(f"{name:<44} run {run + 1}: {rate:>11,.0f} rec/s   client CPU {per_record:5.2f} us/rec = "
                  f"{per_record / unit:4.1f}x floor   load {_loadavg()}", flush=True)  # fmt: skip

    cases = [(f"send() {'keyed' if keyed else 'keyless'}, linger_ms={linger if linger is not None else 'default'}",
              linger, keyed) for keyed in (False, True) for linger in (5, None)]  # fmt: skip
    with ShoalBroker({"paths": PARTITIONS}, flush="interval", flush_interval_ms=200) as broker:
        for name, linger, keyed in cases:
            for run in range(runs):
                report(name, run, *_run(produce(broker.url, "paths", records, linger, keyed)))
        # A revision measured with --json (bench.before) may predate the option.
        for pause_gc in (False, True) if "pause_gc" in inspect.signature(AsyncConsumer).parameters else (False,):
            name = f"getmany(){', pause_gc' if pause_gc else ''}, every Record read"
            for run in range(runs):
                report(name, run, *_run(consume(broker.url, "paths", records, pause_gc)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the measurements to this file")
    args = parser.parse_args(argv)
    out = measure(args.records, args.runs, echo=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
