"""A process that registers a broker in etcd and renews its lease until it is killed.

    python -m tests.metadata.lease_holder ETCD_URL CLUSTER BROKER_ID TTL_MS

Prints ``registered <lease id in hex>`` once the key is written.
"""

from __future__ import annotations

import asyncio
import sys

from shoal.router.metadata.etcd import EtcdClient
from shoal.router.metadata.lease import BrokerLease
from shoal.router.metadata.store import cluster_prefix


async def main(url: str, cluster: str, broker_id: int, ttl_ms: int) -> None:
    async with EtcdClient([url]) as etcd:
        lease = BrokerLease(etcd, cluster_prefix(cluster), broker_id, f"http://127.0.0.1:{9000 + broker_id}", ttl_ms)
        await lease.start()
        print(f"registered {lease.lease_id:x}", flush=True)
        await lease.lost.wait()
        print(f"lost: {lease.lost_reason}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
