"""A follower's fetch loop towards one leader broker: truncate, then copy frames.

One task per source broker fetches every partition this broker follows there, in one
long-poll fetch (msgpack) sent on a WebSocket it keeps open to that broker
(``GET /v1/replica/stream``, the body and answer of ``POST /v1/replica/fetch``),
the next one as soon as the frames of an answer are written: that fetch carries the
new log end, which moves the leader's high watermark. Before a partition's first fetch at a
leader epoch it asks the leader where its own latest epoch ended there
(``POST /v1/replica/epoch-end``, KIP-101) and truncates its log to that point: what it
wrote alone in an epoch the leader does not share (a zombie leader's appends, a
crashed leader's unreplicated tail) goes, and never more. Frames come back verbatim
and are appended unchanged (``PartitionLog.append_replicated``); the follower's high
watermark is the leader's, capped by its own log end. A follower whose log end is
below the leader's log start (retention deleted what it lacks) empties its log and
starts again at the leader's log start.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp
import msgpack

from shoal.client.structs import TopicPartition

if TYPE_CHECKING:
    from .replicas import ReplicaManager

log = logging.getLogger(__name__)

MSGPACK = "application/msgpack"
FETCH_WAIT_MS = 500
FETCH_BYTES = 1 << 20  # per partition
RETRY_S = 0.1
STREAM_PATH = "/v1/replica/stream"
STREAM_SLACK_S = 10.0  # beyond the fetch's max wait, before an answer is given up on


async def call(session: aiohttp.ClientSession, url: str, body: dict) -> dict:
    """POST a msgpack body to a peer broker; the msgpack answer (ClientError/timeout on failure)."""
    async with session.post(url, data=msgpack.packb(body), headers={"Content-Type": MSGPACK}) as resp:
        data = await resp.read()
        if resp.status != 200:
            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message=data[:200].decode(errors="replace"))
        return msgpack.unpackb(data)


class Fetcher:
    """Copies the partitions this broker follows at broker ``source``."""

    def __init__(self, manager: ReplicaManager, source: int):
        self.manager = manager
        self.source = source
        self.epochs: dict[TopicPartition, int] = {}  # partition -> the leader epoch it follows
        self.truncated: dict[TopicPartition, int] = {}  # partition -> the epoch it was truncated for
        self._assigned = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stream: aiohttp.ClientWebSocketResponse | None = None
        self._stream_url: str | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"shoal-fetch-from-{self.source}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_stream()

    def assign(self, partitions: dict[TopicPartition, int]) -> None:
        self.epochs = dict(partitions)
        self.truncated = {tp: e for tp, e in self.truncated.items() if self.epochs.get(tp) == e}
        self._assigned.set()

    def following(self, tp: TopicPartition, epoch: int) -> bool:
        """Does this broker still follow ``tp`` here at ``epoch`` (an answer may outlive that)?"""
        return self.epochs.get(tp) == epoch and tp not in self.manager.leading

    @property
    def url(self) -> str:
        return self.manager.membership.topology.broker(self.source).url

    async def _run(self) -> None:
        while True:
            if not self.epochs:
                await self._close_stream()
                self._assigned.clear()
                await self._assigned.wait()
                continue
            try:
                await self._truncate()
                await self._fetch()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                log.debug("fetch from broker %d failed: %s", self.source, exc)
                await asyncio.sleep(RETRY_S)
            except Exception:
                log.exception("fetch from broker %d failed", self.source)
                await asyncio.sleep(RETRY_S)

    async def _truncate(self) -> None:
        """Truncate each newly followed partition to where its latest epoch ends on the leader."""
        todo = [(tp, e) for tp, e in self.epochs.items() if self.truncated.get(tp) != e]
        if not todo:
            return
        logs = self.manager.logs
        asks = []
        for tp, epoch in todo:
            plog = await logs.get_or_create(tp.topic, tp.partition)
            asks.append([tp.topic, tp.partition, plog.epochs.latest_epoch, epoch])
        answer = await call(self.manager.session, self.url + "/v1/replica/epoch-end", {"partitions": asks})
        for (tp, epoch), (error, leader_epoch, end_offset) in zip(todo, answer["partitions"]):
            if error is not None or not self.following(tp, epoch):
                continue  # not the leader at this epoch (yet): asked again with the next round
            plog = await logs.get_or_create(tp.topic, tp.partition)
            if leader_epoch >= 0 and leader_epoch != plog.epochs.latest_epoch:
                # the leader never led in our latest epoch: cut where that older epoch ends here
                end_offset = min(end_offset, plog.epochs.end_offset_for(leader_epoch, plog.log_end_offset)[1])
            if leader_epoch < 0:
                end_offset = plog.log_start_offset
            if end_offset < plog.log_end_offset:
                log.warning(
                    "%s/%d: truncating from %d to %d, where epoch %d ends on leader %d",
                    tp.topic, tp.partition, plog.log_end_offset, end_offset, leader_epoch, self.source,
                )
                await plog.truncate_to(end_offset)
            self.truncated[tp] = epoch

    async def _fetch(self) -> None:
        logs = self.manager.logs
        parts = [tp for tp, e in self.epochs.items() if self.truncated.get(tp) == e]
        if not parts:
            await asyncio.sleep(RETRY_S)
            return
        asks = []
        asked = [(tp, self.epochs[tp]) for tp in parts]
        for tp, epoch in asked:
            plog = await logs.get_or_create(tp.topic, tp.partition)
            asks.append([tp.topic, tp.partition, plog.log_end_offset, epoch])
        body = {"replica_id": self.manager.me, "max_wait_ms": FETCH_WAIT_MS, "max_bytes": FETCH_BYTES, "partitions": asks}
        answer = await self._exchange(body)
        for (tp, epoch), (error, high_watermark, frames, log_start) in zip(asked, answer["partitions"]):
            if not self.following(tp, epoch):
                continue  # the leader changed while the request was out: its answer is stale
            plog = await logs.get_or_create(tp.topic, tp.partition)
            if error == "OFFSET_OUT_OF_RANGE" and plog.log_end_offset < log_start:
                log.warning(
                    "%s/%d: log end %d is below the log start %d of leader %d: starting again from there",
                    tp.topic, tp.partition, plog.log_end_offset, log_start, self.source,
                )
                await plog.truncate_fully_and_start_at(log_start)
                continue
            if error is not None:
                if error == "OFFSET_OUT_OF_RANGE":
                    self.truncated.pop(tp, None)  # ahead of the leader: truncate again
                continue
            if frames:
                await plog.append_replicated(frames)
            plog.advance_high_watermark(min(high_watermark, plog.log_end_offset))

    async def _exchange(self, body: dict) -> dict:
        """One fetch and its answer, on the stream to the leader (opened if need be)."""
        url = self.url
        if self._stream is not None and (self._stream.closed or self._stream_url != url):
            await self._close_stream()
        if self._stream is None:
            self._stream = await self.manager.session.ws_connect(
                url + STREAM_PATH, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=1.0)
            )
            self._stream_url = url
        ws = self._stream
        try:
            await ws.send_bytes(msgpack.packb(body))
            msg = await ws.receive(timeout=body["max_wait_ms"] / 1000 + STREAM_SLACK_S)
        except BaseException:
            await self._close_stream()  # an answer still under way would be taken for the next fetch's
            raise
        if msg.type != aiohttp.WSMsgType.BINARY:
            await self._close_stream()
            raise aiohttp.ClientError(f"the fetch stream of broker {self.source} ended: {msg.type.name} {msg.extra or ''}")
        return msgpack.unpackb(msg.data)

    async def _close_stream(self) -> None:
        ws, self._stream = self._stream, None
        if ws is not None:
            await asyncio.shield(ws.close())
