"""The producer's sender: one task that posts ready batches, each straight to its partition's owner.

It takes the batches the accumulator has ready, at most one request per partition
(the accumulator mutes a partition while its batch is out) and ``max_in_flight`` per
broker at a time. A retriable failure puts the batch back at the head of its
partition with a jittered exponential backoff, so records of a partition are never
reordered; a failure for good fails that batch's futures.

Idempotence: the producer draws a random 63-bit producer id and numbers the records
of each partition from 0 (a batch's ``base_sequence`` is the previous batch's plus its
record count), fixed when the batch is first sent. A retry resends the same bytes, so
the broker recognises a batch it already wrote and answers with the original offsets.
When a batch that was sent fails for good, its sequence numbers may or may not be
written; to leave no gap the producer takes a new producer id, and every partition
starts again from sequence 0 (Kafka's epoch bump, simplified).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Callable

from .accumulator import ProducerBatch, RecordAccumulator
from .cluster import Cluster, backoff_seconds
from .errors import DuplicateSequence, ProducerClosedError, ShoalError, ShoalTimeoutError, Throttled, UnknownTopic
from .http import BrokerClient

__all__ = ["Sender"]

log = logging.getLogger(__name__)

_MAX_SEQUENCE = 2**31 - 1


def _new_producer_id() -> int:
    return random.getrandbits(63)


class Sender:
    """Sends an accumulator's batches until stopped (see the module doc).

    Args:
        http, cluster: the producer's broker client and topology.
        acks: ``"all"`` or ``"1"``, sent with every batch.
        max_in_flight: concurrent requests per broker.
        delivery_timeout: seconds from a batch's creation to its acknowledgement.
        backoff: the first retry's backoff and its ceiling, in ms.
        idempotent: stamp batches with a producer id and sequences.
        room: set whenever buffer memory may have been freed.
        on_new_topology: called before sending under a topology not seen before.
        on_death: called once if the task ends other than by ``stop()``.
    """

    def __init__(
        self,
        http: BrokerClient,
        cluster: Cluster,
        *,
        acks: str,
        max_in_flight: int,
        delivery_timeout: float,
        backoff: tuple[float, float],
        idempotent: bool,
        room: asyncio.Event,
        on_new_topology: Callable[[], None],
        on_death: Callable[[ProducerClosedError, BaseException | None], None],
    ):
        self._http = http
        self._cluster = cluster
        self._acks = acks
        self._max_in_flight = max_in_flight
        self._delivery_timeout = delivery_timeout
        self._backoff = backoff
        self._idempotent = idempotent
        self._room = room
        self._on_new_topology = on_new_topology
        self._on_death = on_death
        self.producer_id = _new_producer_id() if idempotent else -1
        self._next_sequence: dict[tuple[str, int], int] = {}
        self.wakeup = asyncio.Event()
        self._acc: RecordAccumulator | None = None
        self._metadata = None  # the topology last sent under
        self._in_flight: dict[str, int] = defaultdict(int)
        self._requests: set[asyncio.Task] = set()
        self.task: asyncio.Task | None = None
        self._stopping = False

    def start(self, acc: RecordAccumulator) -> None:
        self._acc = acc
        self.task = asyncio.get_running_loop().create_task(self._run(), name="shoal-producer-sender")

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def stop(self) -> None:
        """Cancel the task and every request in flight (their batches stay as they are)."""
        self._stopping = True
        tasks = [t for t in (self.task, *self._requests) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        try:
            while True:
                await self.wakeup.wait()
                self.wakeup.clear()
                self._send_ready()
        except asyncio.CancelledError:
            if not self._stopping:
                self._on_death(ProducerClosedError("the producer's sender task was cancelled"), None)
            raise
        except BaseException as exc:
            log.exception("producer sender task failed")
            self._on_death(ProducerClosedError(f"the producer's sender task failed: {exc!r}"), exc)
            raise

    def _send_ready(self) -> None:
        acc = self._acc
        loop = asyncio.get_running_loop()
        now = loop.time()
        meta = self._cluster.metadata
        if meta is not self._metadata:  # partitions may have changed
            self._metadata = meta
            self._on_new_topology()
        for batch in acc.ready(now):
            url = meta.owner_url(batch.tp.topic, batch.tp.partition)
            if now - batch.created > self._delivery_timeout or url is None:
                acc.pop(batch)
                acc.unmute(batch.tp)
                if url is None:
                    self.fail_batch(batch, UnknownTopic(f"{batch.tp} is not in the topology any more", topic=batch.tp.topic))
                else:
                    self.fail_batch(batch, self._expired(batch, None))
                self.wakeup.set()  # the batch behind it may be ready too
                continue
            if self._in_flight[url] >= self._max_in_flight:
                continue
            acc.pop(batch)
            self._in_flight[url] += 1
            task = loop.create_task(self._produce(batch, url))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)

    def _stamp(self, batch: ProducerBatch) -> None:
        """Fix the batch's producer id and sequence, and encode it."""
        if not self._idempotent:
            batch.encode()
            return
        key = (batch.tp.topic, batch.tp.partition)
        count = batch.count
        seq = self._next_sequence.get(key, 0)
        if seq + count > _MAX_SEQUENCE:
            self._bump_producer_id(f"sequence of {batch.tp} reached 2**31")
            seq = 0
        batch.encode(self.producer_id, seq)
        self._next_sequence[key] = seq + count

    async def _produce(self, batch: ProducerBatch, url: str) -> None:
        tp = batch.tp
        acc = self._acc
        try:
            if batch.frame is None:
                self._stamp(batch)
            answer = await self._http.produce(url, tp.topic, tp.partition, batch.frame, acks=self._acks)
        except DuplicateSequence:
            # Already written, but the broker no longer knows where (Kafka does the same).
            log.warning("batch of %d records to %s was already written; its offsets are unknown", batch.count, tp)
            acc.complete(batch, -1)
        except ShoalError as exc:
            self._on_error(batch, exc)
        except Exception as exc:
            self.fail_batch(batch, exc)
        else:
            acc.complete(batch, answer["base_offset"])
        finally:
            self._in_flight[url] -= 1
            acc.unmute(tp)
            self.wakeup.set()
            self._room.set()

    def _on_error(self, batch: ProducerBatch, exc: ShoalError) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not exc.retriable:
            self.fail_batch(batch, exc)
            return
        deadline = batch.created + self._delivery_timeout
        batch.attempts += 1
        delay = backoff_seconds(batch.attempts, *self._backoff)
        if isinstance(exc, Throttled):
            delay = max(delay, exc.retry_after or 0)
        if now + delay >= deadline:
            self.fail_batch(batch, self._expired(batch, exc))
            return
        if exc.refresh_topology:
            self._cluster.refresh_soon(getattr(exc, "owner_url", None)).add_done_callback(lambda _: self.wakeup.set())
        log.warning(
            "retrying batch of %d records to %s in %.0f ms (attempt %d): %s",
            batch.count, batch.tp, delay * 1000, batch.attempts + 1, exc,
        )
        batch.retry_at = now + delay
        self._acc.requeue(batch)

    def _expired(self, batch: ProducerBatch, last: BaseException | None) -> ShoalTimeoutError:
        err = ShoalTimeoutError(
            f"batch of {batch.count} records to {batch.tp} not acknowledged within "
            f"delivery_timeout_ms={self._delivery_timeout * 1000:g}" + (f"; last error: {last}" if last else "")
        )
        err.__cause__ = last
        return err

    def fail_batch(self, batch: ProducerBatch, exc: BaseException) -> None:
        """Fail the batch's records; a stamped batch may be partly written: new producer id."""
        self._acc.fail(batch, exc)
        self._room.set()
        if batch.base_sequence >= 0 and batch.producer_id == self.producer_id:
            self._bump_producer_id(f"a batch to {batch.tp} failed ({exc})")

    def _bump_producer_id(self, why: str) -> None:
        old, self.producer_id = self.producer_id, _new_producer_id()
        self._next_sequence.clear()
        log.warning("producer id %d -> %d: %s", old, self.producer_id, why)
