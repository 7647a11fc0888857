"""A consumer service for the container tests: reads a topic for a group, commits after every batch.

Prints one JSON line per record (``{"partition", "offset", "value"}``) and one per commit
(``{"committed": {partition: offset}}``) on stdout, so a test can follow it through
``docker logs``. Killed at any moment and started again, it resumes from the group's
committed offsets.

    python consumer_app.py --bootstrap http://127.0.0.1:9091 --topic orders --group billing
"""

import argparse
import asyncio
import json

from shoal.client import AsyncConsumer


async def consume(bootstrap: str, topic: str, group: str) -> None:
    async with AsyncConsumer(topic, bootstrap=bootstrap, group=group, request_timeout_ms=5000) as consumer:
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches:
                continue
            for tp, records in batches.items():
                for record in records:
                    print(json.dumps({"partition": tp.partition, "offset": record.offset, "value": record.value.decode()}))
            await consumer.commit()
            committed = {tp.partition: records[-1].offset + 1 for tp, records in batches.items()}
            print(json.dumps({"committed": committed}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    args = parser.parse_args()
    asyncio.run(consume(args.bootstrap, args.topic, args.group))


if __name__ == "__main__":
    main()
