"""The etcd client against a real etcd: keys, compare-and-swap, leases, watches, failover, TLS."""

from __future__ import annotations

import asyncio
import signal
import urllib.request

import pytest
import trustme

from shoal.router.metadata.config import EtcdTls
from shoal.router.metadata.etcd import (
    EtcdClient,
    EtcdRequestError,
    EtcdUnavailable,
    LeaseNotFound,
    WatchCompacted,
    delete_op,
    mod_revision_is,
    prefix_end,
    put_op,
    range_op,
)
from tests.harness import EtcdServer, free_port
from tests.metadata.helpers import poll


def test_prefix_end():
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


async def test_put_get_range_delete(etcd, etcd_prefix):
    p = etcd_prefix
    assert await etcd.get(p + b"missing") is None
    rev = await etcd.put(p + b"a", b"1")
    await etcd.put(p + b"b/x", b"\x00\xff")
    await etcd.put(p[:-1] + b"-sibling", b"not under the prefix")
    kv = await etcd.get(p + b"a")
    assert (kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version) == (p + b"a", b"1", rev, rev, 1)
    kvs, read_at = await etcd.range(p)
    assert [(k.key, k.value) for k in kvs] == [(p + b"a", b"1"), (p + b"b/x", b"\x00\xff")]
    assert read_at >= rev + 1
    assert await etcd.delete(p + b"b/", prefix=True) == 1
    assert [k.key for k in (await etcd.range(p))[0]] == [p + b"a"]


async def test_txn_compares_mod_revision(etcd, etcd_prefix):
    key = etcd_prefix + b"k"
    created = await etcd.txn([mod_revision_is(key, 0)], [put_op(key, b"v1")])
    assert created.succeeded
    again = await etcd.txn([mod_revision_is(key, 0)], [put_op(key, b"lost")], [range_op(key)])
    assert not again.succeeded
    [[current]] = again.ranges
    assert current.value == b"v1" and current.mod_revision == created.revision
    stale = await etcd.txn([mod_revision_is(key, created.revision - 1)], [put_op(key, b"lost")])
    assert not stale.succeeded
    swapped = await etcd.txn([mod_revision_is(key, current.mod_revision)], [put_op(key, b"v2"), range_op(key)])
    assert swapped.succeeded and swapped.ranges[0][0].value == b"v2"
    gone = await etcd.txn([mod_revision_is(key, swapped.revision)], [delete_op(key)])
    assert gone.succeeded and await etcd.get(key) is None


async def test_lease_keepalive_revoke_and_lapse(etcd, etcd_prefix):
    lease, ttl = await etcd.grant(5)
    assert ttl == 5
    await etcd.put(etcd_prefix + b"held", b"x", lease=lease)
    assert (await etcd.get(etcd_prefix + b"held")).lease == lease
    assert await etcd.keepalive(lease) == 5
    assert 0 < await etcd.time_to_live(lease) <= 5
    await etcd.revoke(lease)
    assert await etcd.get(etcd_prefix + b"held") is None
    assert await etcd.time_to_live(lease) == -1
    with pytest.raises(LeaseNotFound):
        await etcd.keepalive(lease)
    with pytest.raises(LeaseNotFound):
        await etcd.put(etcd_prefix + b"late", b"x", lease=lease)
    await etcd.revoke(lease)  # twice is fine

    short, _ = await etcd.grant(1)
    await etcd.put(etcd_prefix + b"lapses", b"x", lease=short)
    await poll(lambda: _is_gone(etcd, etcd_prefix + b"lapses"))
    with pytest.raises(LeaseNotFound):
        await etcd.keepalive(short)


async def _is_gone(etcd, key):
    return await etcd.get(key) is None


async def test_watch_streams_puts_and_deletes_in_order(etcd, etcd_prefix):
    seen = []
    got_three = asyncio.Event()
    _, start = await etcd.range(etcd_prefix)

    async def consume():
        async for events in etcd.watch(etcd_prefix, start_revision=start + 1):
            seen.extend((e.type, e.kv.key, e.kv.value) for e in events)
            if len(seen) >= 3:
                got_three.set()

    task = asyncio.create_task(consume())
    try:
        await etcd.put(etcd_prefix + b"a", b"1")
        await etcd.put(etcd_prefix[:-1] + b"-outside", b"not watched")
        await etcd.txn([], [put_op(etcd_prefix + b"a", b"2"), delete_op(etcd_prefix + b"b")])
        await etcd.delete(etcd_prefix + b"a")
        await asyncio.wait_for(got_three.wait(), 10)
    finally:
        task.cancel()
    p = etcd_prefix
    assert seen == [("PUT", p + b"a", b"1"), ("PUT", p + b"a", b"2"), ("DELETE", p + b"a", b"")]


async def test_watch_replays_from_a_revision(etcd, etcd_prefix):
    first = await etcd.put(etcd_prefix + b"x", b"1")
    await etcd.put(etcd_prefix + b"x", b"2")
    stream = etcd.watch(etcd_prefix, start_revision=first)
    events = await asyncio.wait_for(anext(stream), 10)
    assert [e.kv.value for e in events] == [b"1", b"2"]
    await stream.aclose()


async def test_watch_of_a_compacted_revision_says_so(etcd, etcd_prefix):
    old = await etcd.put(etcd_prefix + b"x", b"1")
    now = await etcd.put(etcd_prefix + b"x", b"2")
    await etcd.call("kv/compaction", {"revision": str(now)})
    with pytest.raises(WatchCompacted) as info:
        await asyncio.wait_for(anext(etcd.watch(etcd_prefix, start_revision=old)), 10)
    assert info.value.compact_revision == now


async def test_requests_fail_over_to_a_live_endpoint(etcd_server, etcd_prefix):
    dead = f"http://127.0.0.1:{free_port()}"
    async with EtcdClient([dead, etcd_server.url], request_timeout_s=1) as etcd:
        await etcd.put(etcd_prefix + b"k", b"v")
        assert etcd.endpoints[etcd._current] == etcd_server.url
        assert (await etcd.get(etcd_prefix + b"k")).value == b"v"


async def test_no_live_endpoint_is_unavailable():
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    async with EtcdClient(dead, request_timeout_s=1) as etcd:
        with pytest.raises(EtcdUnavailable) as info:
            await etcd.get(b"k")
        assert info.value.code is None and info.value.endpoint in dead
        with pytest.raises(EtcdUnavailable):
            await anext(etcd.watch(b"/k"))


async def test_refused_request_is_a_request_error(etcd):
    with pytest.raises(EtcdRequestError) as info:
        await etcd.put(b"", b"no key")
    assert info.value.code == 3 and "key is not provided" in str(info.value)


async def test_watch_survives_an_etcd_restart(tmp_path, etcd_prefix):
    """SIGKILL etcd under a live watch; after restart the watch resumes with nothing lost."""
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    try:
        async with EtcdClient([server.url], request_timeout_s=1) as etcd:
            values = []
            _, start = await etcd.range(etcd_prefix)

            async def consume():
                async for events in etcd.watch(etcd_prefix, start_revision=start + 1):
                    values.extend(e.kv.value for e in events)

            task = asyncio.create_task(consume())
            await etcd.put(etcd_prefix + b"k", b"before")
            await poll(lambda: _has(values, b"before"))
            server.signal(signal.SIGKILL)
            server.proc.wait(10)
            server.start()
            await etcd.put(etcd_prefix + b"k", b"after")
            await poll(lambda: _has(values, b"after"))
            task.cancel()
        assert values == [b"before", b"after"]
    finally:
        server.stop()


async def _has(values, value):
    return value in values


async def test_tls_to_etcd(tmp_path, etcd_prefix):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "etcd.pem")
    cert.private_key_pem.write_to_path(tmp_path / "etcd.key")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    server = EtcdServer(tmp_path / "etcd", cert=(str(tmp_path / "etcd.pem"), str(tmp_path / "etcd.key")))
    server.start()
    try:
        assert server.url.startswith("https://")
        async with EtcdClient([server.url], tls=EtcdTls(ca_file=str(tmp_path / "ca.pem"))) as etcd:
            await etcd.put(etcd_prefix + b"k", b"secret")
            assert (await etcd.get(etcd_prefix + b"k")).value == b"secret"
        async with EtcdClient([server.url], request_timeout_s=2) as untrusting:
            with pytest.raises(EtcdUnavailable) as info:
                await untrusting.get(etcd_prefix + b"k")
            assert "certificate" in str(info.value).lower()
    finally:
        server.stop()


async def test_a_watch_from_now_resumes_where_it_started(tmp_path, etcd_prefix):
    """A watch that saw no event yet and breaks must not skip what happened meanwhile."""
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    try:
        async with EtcdClient([server.url], request_timeout_s=1) as etcd:
            values = []

            async def consume():
                async for events in etcd.watch(etcd_prefix):
                    values.extend(e.kv.value for e in events)

            task = asyncio.create_task(consume())
            await poll(lambda: _watchers(server.url))  # the watch is in place
            server.signal(signal.SIGKILL)
            server.proc.wait(10)
            server.start()  # blocks this loop until etcd is healthy: the put below wins the race
            await etcd.put(etcd_prefix + b"k", b"while away")
            await poll(lambda: _has(values, b"while away"))
            task.cancel()
    finally:
        server.stop()


async def _watchers(url: str) -> bool:
    """Whether etcd counts a watcher (its own metric)."""
    text = await asyncio.to_thread(_read_text, url + "/metrics")
    return any(line.startswith("etcd_debugging_mvcc_watcher_total ") and float(line.split()[1]) > 0 for line in text.splitlines())


def _read_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()
