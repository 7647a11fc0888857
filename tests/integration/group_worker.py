"""A consumer process for group tests: subscribe, write what it processed, commit.

    python -m tests.integration.group_worker URLS GROUP TOPIC OUT [--instance ID] [--session MS]

Each processed record becomes a line ``partition offset`` in OUT (flushed before the
commit, so a line exists for every committed record); OUT.member holds its member id. Revoked partitions are committed
by the rebalance listener before they go. OUT.events gets a line ``time.time() +|- p,p,...``
when partitions are assigned (+) and when they are revoked or lost (-).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from shoal.client import AsyncConsumer


class CommitOnRevoke:
    def __init__(self, consumer: AsyncConsumer, events: Path):
        self.consumer = consumer
        self.events = events

    def note(self, sign: str, partitions) -> None:
        with open(self.events, "a") as f:
            f.write(f"{time.time():.6f} {sign} {','.join(str(tp.partition) for tp in sorted(partitions))}\n")

    def on_partitions_assigned(self, partitions):
        self.note("+", partitions)

    async def on_partitions_revoked(self, partitions):
        positions = {tp: await self.consumer.position(tp) for tp in partitions}
        await self.consumer.commit({tp: off for tp, off in positions.items() if off is not None})
        self.note("-", partitions)

    def on_partitions_lost(self, partitions):
        self.note("-", partitions)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("urls")
    parser.add_argument("group")
    parser.add_argument("topic")
    parser.add_argument("out")
    parser.add_argument("--instance")
    parser.add_argument("--session", type=int, default=2000)
    args = parser.parse_args()
    consumer = AsyncConsumer(
        bootstrap=args.urls.split(","), group=args.group, session_timeout_ms=args.session,
        group_instance_id=args.instance, fetch_max_wait_ms=200,
    )
    consumer.subscribe([args.topic], listener=CommitOnRevoke(consumer, Path(args.out + ".events")))
    member = Path(args.out + ".member")
    with open(args.out, "a", buffering=1) as out:
        async with consumer:
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                member_id = consumer.group_health()["member_id"] or ""
                if not member.exists() or member.read_text() != member_id:
                    member.write_text(member_id)
                for tp, records in batches.items():
                    out.write("".join(f"{tp.partition} {r.offset}\n" for r in records))
                if batches:
                    out.flush()
                    try:
                        await consumer.commit()
                    except Exception as exc:  # fenced during a rebalance: records come again
                        print(f"commit failed: {exc}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
