"""``shoal bench produce|consume``: performance tests against a running cluster."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shoal.router.cli.base import Options, action, global_options
from shoal.router.cli.output import CliError, emit


@click.group()
@global_options
def bench() -> None:
    """Measure produce and consume throughput and latency

    Like Kafka's perf-test tools: `produce` sends records through the client library
    (one send() each, or --bulk N per send_batch()) and reports records/s, MB/s and
    acknowledgement latency percentiles; `consume` reads a topic from the start
    (getbatches(), or getmany() with --records-api) and reports records/s and MB/s.
    Runs on uvloop when it is installed. The brokers come
    from --config. For the side-by-side comparison with Redis and NATS, see
    `python -m bench` in a clone of the repository.
    """


def _bounds(f: Callable) -> Callable:
    f = click.option("-n", "--records", type=int, metavar="N",
                     help="Stop after N records (default 1,000,000 unless --duration is given).")(f)  # fmt: skip
    return click.option("-d", "--duration", type=float, metavar="SECONDS",
                        help="Stop after this many seconds (default: no time limit).")(f)  # fmt: skip


@bench.command("produce")
@global_options
@click.option("-t", "--topic", required=True, help="An existing topic to write to.")
@_bounds
@click.option("-s", "--record-size", type=int, default=100, show_default=True, metavar="BYTES",
              help="Value bytes per record.")
@click.option("--keys", default="none", show_default=True, metavar="none|random|N",
              help="Keyless records, a random key per record, or N distinct keys taken in turn.")
@click.option("-p", "--partitions", type=int, metavar="N",
              help="Send keyless records round-robin to partitions 0..N-1 (default: the client's sticky partitioner).")
@click.option("--linger-ms", type=float, metavar="MS", help="Producer linger (default: the client's).")
@click.option("--batch-bytes", type=int, metavar="BYTES", help="Producer batch size bound (default: the client's).")
@click.option("--buffer-bytes", type=int, metavar="BYTES",
              help="Producer buffer_memory: records queued and unacknowledged before send() waits (default: the client's).")
@click.option("--in-flight", type=int, default=5, show_default=True, metavar="N",
              help="Concurrent produce requests per broker.")
@click.option("--acks", type=click.Choice(["all", "1"]), default="all", show_default=True,
              help="all: acknowledged once every in-sync replica has the record; 1: once the leader has.")
@click.option("--throughput", type=float, metavar="RECORDS/S",
              help="Send at this fixed rate; latency then counts from when each record was due (default: as fast as possible).")
@click.option("--bulk", type=int, metavar="N",
              help="Hand N records to each send_batch() call instead of one to each send(); one latency sample per call.")
@action("run produce benchmark")
def produce(opts: Options, topic: str, records: int | None, duration: float | None, throughput: float | None,
            **options: Any) -> None:  # fmt: skip
    """Produce records as fast as possible (or at a fixed rate) and report throughput and latency

    Latency is per record, from send() (or from when it was due under --throughput)
    until its acknowledgement; the run ends once every record is acknowledged.

    EXAMPLES

      shoal bench produce -t events -n 1000000

      shoal bench produce -t events --duration 30 --throughput 10000 -o json

      shoal bench produce -t orders --keys 1000 --linger-ms 5 --batch-bytes 262144

      shoal bench produce -t events -n 1000000 --bulk 1000
    """
    from shoal.router.cli import bench_driver as perf

    if records is None and duration is None:
        records = 1_000_000
    result = _run(
        perf,
        records,
        lambda progress: perf.produce(opts.config, topic, records=records, duration=duration, rate=throughput,
                                      progress=progress, **options),  # fmt: skip
        "produced",
    )
    emit(opts.output, {"kind": "produce", "topic": topic, **result.to_dict()},
         lambda _view: perf.render_text("produced", result) + "\n")  # fmt: skip


@bench.command("consume")
@global_options
@click.option("-t", "--topic", required=True, help="The topic to read, from the earliest offset.")
@_bounds
@click.option("--idle-timeout", type=float, default=10.0, show_default=True, metavar="SECONDS",
              help="Stop when no record arrives for this long.")
@click.option("--records-api", is_flag=True,
              help="Read with getmany(), every record a Record object (default: getbatches(), reading its columns).")
@action("run consume benchmark")
def consume(opts: Options, topic: str, records: int | None, duration: float | None, idle_timeout: float,
            records_api: bool) -> None:  # fmt: skip
    """Read a topic from the start and report throughput

    Reads every partition of the topic through the consumer (no group, nothing
    committed) until --records, --duration or --idle-timeout, summing key and value
    bytes over each getbatches() batch's columns (--records-api: over the Records
    of getmany()).

    EXAMPLES

      shoal bench consume -t events -n 1000000

      shoal bench consume -t events --duration 10 -o json
    """
    from shoal.router.cli import bench_driver as perf

    if records is None and duration is None:
        records = 1_000_000
    result = _run(
        perf,
        records,
        lambda progress: perf.consume(opts.config, topic, records=records, duration=duration,
                                      idle_timeout=idle_timeout, records_api=records_api, progress=progress),  # fmt: skip
        "consumed",
    )
    emit(opts.output, {"kind": "consume", "topic": topic, **result.to_dict()},
         lambda _view: perf.render_text("consumed", result) + "\n")  # fmt: skip


def _run(perf, total: int | None, start: Callable, verb: str):
    """Run a bench coroutine (on uvloop where installed) under a progress bar on stderr,
    shown on terminals only."""
    columns = [TextColumn(f"[bold]{verb}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(verb, total=total)
        try:
            with asyncio.Runner(loop_factory=perf.new_event_loop) as runner:
                return runner.run(start(lambda done: bar.update(task, completed=done)))
        except perf.BenchError as exc:
            raise CliError(str(exc)) from None
