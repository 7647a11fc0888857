"""Producer and consumer performance tests: the logic behind ``shoal bench produce|consume``.

Like Kafka's ``kafka-producer-perf-test``: produce N records (or for a duration) of a
given size through the real client library, optionally at a fixed rate, and report
records/s, MB/s and per-record acknowledgement latency; consume them back and report
records/s and MB/s. Both have a per-record path (``send()``, ``getmany()``) and a bulk
one (``send_batch()``, ``getbatches()``), so either can be measured. The side-by-side comparison in ``bench/`` reuses these functions
and the statistics below for every system, so all of them are measured one way.

Latency of a record counts from the moment it was *due* (at a fixed rate) or handed to
``send()``/``send_batch()`` (unthrottled) until its acknowledgement arrives, so a stalled broker shows
up as latency instead of silently lowering the send rate (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from operator import attrgetter

from shoal.client.accumulator import RecordsFuture
from shoal.client.consumer import AsyncConsumer
from shoal.client.producer import AsyncProducer
from shoal.client.records import RecordBatch
from shoal.client.structs import TopicPartition

MB = 1_000_000
TICK = 0.001  # the pacer's shortest sleep, in seconds
SAMPLE_EVERY = 16  # unthrottled runs time one record in this many
REPORT_EVERY = 1024  # records between progress reports
CHUNK = 256  # unthrottled records between two readings of the clock
KEY_MODES = "none, random or a number of distinct keys"


class BenchError(Exception):
    """A benchmark could not run as asked (bad option, nothing to read)."""


# Fractions at which LatencySummary.cdf samples the distribution: enough for a plot.
CDF_POINTS = (*(i / 20 for i in range(1, 20)), 0.97, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0)


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of per-record latencies, in milliseconds (nearest-rank).

    ``cdf`` holds ``(fraction, ms)`` pairs at ``CDF_POINTS``, for plots.
    """

    count: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    cdf: tuple[tuple[float, float], ...] = ()

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencySummary | None:
        """Summarise latencies given in seconds; None when there are none."""
        if not seconds:
            return None
        s = sorted(seconds)
        return cls(
            count=len(s),
            p50_ms=percentile(s, 50) * 1e3,
            p99_ms=percentile(s, 99) * 1e3,
            p999_ms=percentile(s, 99.9) * 1e3,
            max_ms=s[-1] * 1e3,
            mean_ms=math.fsum(s) / len(s) * 1e3,
            cdf=tuple((q, percentile(s, q * 100) * 1e3) for q in CDF_POINTS),
        )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile of already sorted values."""
    rank = max(1, math.ceil(round(q * len(sorted_values) / 100, 9)))  # round: 99.9% of 1000 is 999
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class BenchResult:
    """What one run moved: ``records`` of payload ``bytes`` in ``seconds``.

    ``bytes`` counts record values (and keys) only, not framing, so numbers compare
    across systems whose framing differs. ``errors`` counts records that failed (in
    an unthrottled produce run: failures among the watched sample times the stride).
    """

    records: int
    bytes: int
    seconds: float
    latency: LatencySummary | None = None
    errors: int = 0

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["records_per_s"] = round(self.records_per_s, 1)
        out["mb_per_s"] = round(self.mb_per_s, 3)
        out["seconds"] = round(self.seconds, 6)
        return out


class LatencyRecorder:
    """Collects one latency sample per acknowledged record; not thread-safe."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.errors = 0

    def track(self, future: asyncio.Future, due: float) -> None:
        """Record ``now - due`` when ``future`` completes (``due`` from ``time.perf_counter``)."""
        future.add_done_callback(partial(self._done, due))

    def _done(self, due: float, future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            self.errors += 1
        else:
            self.samples.append(time.perf_counter() - due)

    def track_batch(self, future: RecordsFuture, due: Sequence[float], count: int) -> None:
        """One sample per entry of ``due`` when the ``send_batch()`` of ``count`` records is
        acknowledged; all ``count`` of them count as errors if it failed."""
        future.add_done_callback(partial(self._batch_done, due, count))

    def _batch_done(self, due: Sequence[float], count: int, future: RecordsFuture) -> None:
        if future.exception() is not None:
            self.errors += count
        else:
            self.ack_many(due)

    def ack_many(self, due: Sequence[float], now: float | None = None) -> None:
        """Several records acknowledged together (a pipelined or batched reply)."""
        now = time.perf_counter() if now is None else now
        self.samples.extend(now - d for d in due)

    def summary(self) -> LatencySummary | None:
        return LatencySummary.of(self.samples)


class Pacer:
    """Hands out records on a fixed-rate schedule: record ``i`` is due at ``start + i / rate``.

    ``await due()`` sleeps until at least one record is due and returns the due times
    of every record that is due now and not yet handed out, so a sender that fell
    behind catches up in a burst instead of shifting the schedule. It sleeps at least
    ``TICK``: shorter sleeps would spin (event loop timers have millisecond
    resolution) and steal the CPU from the system under test; the cost is up to a
    tick of waiting, counted in every system's latency alike.
    """

    def __init__(self, rate: float, *, limit: int | None = None, duration: float | None = None) -> None:
        if rate <= 0:
            raise BenchError(f"rate must be positive, not {rate}")
        self.rate = rate
        self.limit = limit if limit is not None else math.inf
        if duration is not None:
            self.limit = min(self.limit, int(rate * duration))
        if self.limit == math.inf:
            raise BenchError("a paced run needs a record count or a duration")
        self.issued = 0
        self.start = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.issued >= self.limit

    def take(self) -> list[float]:
        """Due times of the records due by now and not yet handed out (maybe none)."""
        target = min(self.limit, int((time.perf_counter() - self.start) * self.rate) + 1)
        times = [self.start + i / self.rate for i in range(self.issued, target)]
        self.issued = max(self.issued, target)
        return times

    async def due(self) -> list[float]:
        """Like ``take()``, but sleeps until at least one record is due (none when done)."""
        while not self.done:
            times = self.take()
            if times:
                return times
            await asyncio.sleep(max(TICK, self.start + self.issued / self.rate - time.perf_counter()))
        return []


def key_source(keys: str) -> Callable[[int], bytes | None]:
    """Turn ``--keys`` into a function from record number to key.

    ``none``: keyless; ``random``: 8 random bytes per record; ``N``: N distinct keys
    (``key-0`` .. ``key-N-1``), taken in turn.
    """
    if keys == "none":
        return lambda i: None
    if keys == "random":
        return lambda i: random.randbytes(8)
    try:
        distinct = int(keys)
    except ValueError:
        distinct = 0
    if distinct < 1:
        raise BenchError(f"--keys must be {KEY_MODES}, not {keys!r}")
    pool = [b"key-%d" % i for i in range(distinct)]
    return lambda i: pool[i % distinct]


def check_bounds(records: int | None, duration: float | None) -> None:
    if records is None and duration is None:
        raise BenchError("give --records or --duration")
    if records is not None and records < 1:
        raise BenchError(f"--records must be at least 1, not {records}")
    if duration is not None and duration <= 0:
        raise BenchError(f"--duration must be positive, not {duration}")


async def produce(
    bootstrap: str | Sequence[str],
    topic: str,
    *,
    records: int | None = None,
    duration: float | None = None,
    record_size: int = 100,
    keys: str = "none",
    partitions: int | None = None,
    linger_ms: float | None = None,
    batch_bytes: int | None = None,
    buffer_bytes: int | None = None,
    in_flight: int = 5,
    acks: str = "all",
    rate: float | None = None,
    bulk: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> BenchResult:
    """Produce through ``AsyncProducer`` and measure throughput and ack latency.

    Args:
        bootstrap: broker URL(s) or a cluster.yaml path, as for the client.
        topic: an existing topic.
        records / duration: stop after this many records or seconds (whichever first).
        record_size: value bytes per record.
        keys: ``none``, ``random`` or a number of distinct keys (see ``key_source``).
        partitions: keyless records go round-robin to partitions ``0..N-1``; None lets
            the client's partitioner choose (sticky for keyless records).
        linger_ms, batch_bytes: producer batching bounds; None keeps the client's defaults.
        buffer_bytes: the producer's ``buffer_memory``: records queued but not yet
            acknowledged; ``send()`` waits beyond it. None keeps the client's default.
            A duration-bounded run also waits for what is buffered when time is up.
        in_flight: concurrent produce requests per broker (``max_in_flight_per_broker``).
        acks: ``"all"`` (the client's default) or ``"1"``.
        rate: records per second (None: as fast as the producer takes them).
        bulk: hand the producer this many records per ``send_batch()`` call instead of
            one ``send()`` each (at a fixed rate: at most this many of the records due).
            Unthrottled, each call gives one latency sample; with ``partitions``, the
            calls take the partitions in turn.
        progress: called now and then with the number of records acknowledged.

    Raises:
        BenchError for options that cannot work; ShoalError from the client.
    """
    check_bounds(records, duration)
    if record_size < 0:
        raise BenchError(f"--record-size must be >= 0, not {record_size}")
    if partitions is not None and (partitions < 1 or keys != "none"):
        raise BenchError("--partitions needs a positive count and --keys none (keys choose the partition)")
    if bulk is not None and bulk < 1:
        raise BenchError(f"--bulk must be at least 1, not {bulk}")
    key_of = key_source(keys)
    value = os.urandom(record_size)
    options = {"max_in_flight_per_broker": in_flight, "acks": acks}
    if linger_ms is not None:
        options["linger_ms"] = linger_ms
    if batch_bytes is not None:
        options["max_batch_bytes"] = batch_bytes
    if buffer_bytes is not None:
        options["buffer_memory"] = buffer_bytes
    recorder = LatencyRecorder()
    # Unthrottled, only one record in SAMPLE_EVERY is watched (timed, and checked for
    # failure): watching each would cost the producer loop more than the client does,
    # not least in garbage collection of the futures kept alive. A send_batch() call
    # is watched as a whole, so every call is.
    stride = 1 if rate or bulk else SAMPLE_EVERY
    plain = keys == "none" and not partitions  # the common case, kept lean
    sent = key_bytes = calls = 0

    async with AsyncProducer(bootstrap, **options) as producer:
        send = producer.send
        full = [value] * (bulk or 0)  # the values of a full send_batch(), built once

        async def send_bulk(dues: Sequence[float | None]) -> None:
            """send_batch() the records in runs of ``bulk``; None: due now (one sample per call)."""
            nonlocal sent, key_bytes, calls
            for i in range(0, len(dues), bulk):
                run = dues[i : i + bulk]
                n = len(run)
                values = full if n == bulk else full[:n]
                due = [time.perf_counter()] if run[0] is None else run
                if plain:
                    future = await producer.send_batch(topic, values)
                else:
                    run_keys = None if keys == "none" else [key_of(sent + j) for j in range(n)]
                    future = await producer.send_batch(topic, values, keys=run_keys,
                                                       partition=calls % partitions if partitions else None)  # fmt: skip
                    key_bytes += sum(map(len, run_keys or ()))
                recorder.track_batch(future, due, n)
                sent += n
                calls += 1
                if progress:
                    progress(sent)

        async def send_many(dues: Sequence[float | None]) -> None:
            """Send one record per entry; None: due now (read the clock only if watched)."""
            nonlocal sent, key_bytes
            for due in dues:
                if plain:
                    key = None
                    future = await send(topic, value)
                else:
                    key = key_of(sent)
                    future = await send(topic, value, key=key, partition=sent % partitions if partitions else None)
                if not sent % stride:
                    recorder.track(future, time.perf_counter() if due is None else due)
                sent += 1
                if key:
                    key_bytes += len(key)
                if progress and not sent % REPORT_EVERY:
                    progress((len(recorder.samples) + recorder.errors) * stride)

        send_one = send_bulk if bulk else send_many
        start = time.perf_counter()
        if rate:
            pacer = Pacer(rate, limit=records, duration=duration)
            while not pacer.done:
                await send_one(await pacer.due())
        else:
            deadline = start + duration if duration else math.inf
            limit = records if records is not None else math.inf
            chunk = bulk or CHUNK
            while sent < limit and time.perf_counter() < deadline:
                await send_one([None] * min(chunk, limit - sent))
        await producer.flush()
        elapsed = time.perf_counter() - start
        await asyncio.sleep(0)  # every future is done: let the timing callbacks run
    if progress:
        progress(sent)
    failed = min(sent, recorder.errors * stride)
    payload = sent * record_size + key_bytes
    return BenchResult(
        records=sent - failed,
        bytes=payload * (sent - failed) // sent if sent else 0,
        seconds=elapsed,
        latency=recorder.summary(),
        errors=failed,
    )


async def consume(
    bootstrap: str | Sequence[str],
    topic: str,
    *,
    records: int | None = None,
    duration: float | None = None,
    partitions: Sequence[int] | None = None,
    max_records: int = 100_000,
    idle_timeout: float = 10.0,
    records_api: bool = False,
    progress: Callable[[int], None] | None = None,
) -> BenchResult:
    """Read ``topic`` from the earliest offset through ``AsyncConsumer``; measure throughput.

    Reads every partition, or only ``partitions``, with ``getbatches()``, summing the
    payload over each batch's ``keys`` and ``values`` columns (no ``Record`` is built);
    ``records_api`` reads with ``getmany()`` instead, every record a ``Record``. Stops after ``records`` records,
    ``duration`` seconds, or ``idle_timeout`` seconds without a new record. The clock
    starts once the consumer has learned the topology.

    Raises:
        BenchError when nothing at all could be read.
    """
    check_bounds(records, duration)
    topics = (topic,) if partitions is None else ()
    async with AsyncConsumer(*topics, bootstrap=bootstrap, auto_offset_reset="earliest") as consumer:
        if partitions is not None:
            consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.start()
        got = 0
        payload = 0
        start = time.perf_counter()
        deadline = start + duration if duration else math.inf
        limit = records if records is not None else math.inf
        last_progress = start
        read, size_of = (consumer.getmany, _record_bytes) if records_api else (consumer.getbatches, _column_bytes)
        while got < limit:
            now = time.perf_counter()
            if now >= deadline or now - last_progress > idle_timeout:
                break
            want = max_records if limit == math.inf else min(max_records, limit - got)
            batches = await read(timeout_ms=500, max_records=want)
            for batch in batches.values():
                got += len(batch)
                payload += size_of(batch)
            if batches:
                last_progress = time.perf_counter()
                if progress:
                    progress(got)
        elapsed = last_progress - start
    if got == 0:
        raise BenchError(f"read nothing from {topic} in {idle_timeout:.0f}s")
    return BenchResult(records=got, bytes=payload, seconds=elapsed)


_VALUE = attrgetter("value")
_KEY = attrgetter("key")


def _record_bytes(records: Sequence) -> int:
    """Key and value bytes of consumed records, summed without Python code per record."""
    return _column_sum(map(_VALUE, records)) + _column_sum(map(_KEY, records))


def _column_bytes(batch: RecordBatch) -> int:
    """Key and value bytes of a ``getbatches()`` batch, read from its columns."""
    return _column_sum(batch.values) + _column_sum(batch.keys)


def _column_sum(column: Iterable[bytes | None]) -> int:
    return sum(map(len, filter(None, column)))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop where uvloop is installed (what a fast client runs on), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def render_text(kind: str, result: BenchResult) -> str:
    """One summary block for people, in the shape of Kafka's perf-test line."""
    lines = [
        f"{result.records:,} records {kind} in {result.seconds:.2f} s: "
        f"{result.records_per_s:,.0f} records/s, {result.mb_per_s:,.2f} MB/s"
    ]
    lat = result.latency
    if lat:
        lines.append(
            f"latency ms: p50 {lat.p50_ms:.2f}  p99 {lat.p99_ms:.2f}  p99.9 {lat.p999_ms:.2f}  "
            f"max {lat.max_ms:.2f}  mean {lat.mean_ms:.2f}"
        )
    if result.errors:
        lines.append(f"{result.errors:,} records failed")
    return "\n".join(lines)
