"""The client on a cluster with bearer-token auth, and over HTTPS with the cluster's own CA."""

from __future__ import annotations

import ssl

import pytest
import trustme
import yaml

from shoal.client import AsyncConsumer, AsyncProducer, Consumer, Producer, TopicPartition
from shoal.client.errors import Forbidden, Unauthorized
from shoal.router.server.auth import hash_token
from tests.harness import free_port
from tests.security.procs import Proc

WRITER, READER = "writer-" + "w" * 40, "reader-" + "r" * 40


def _secure(cluster_factory, n_brokers):
    cluster = cluster_factory(n_brokers, {"orders": 2, "audit": 1}, start=False)
    cluster.config["auth"] = {
        "principals": {
            "writer": {"token_hash": hash_token(WRITER), "produce": ["orders"]},
            "reader": {"token_hash": hash_token(READER), "consume": ["orders"], "groups": ["billing"]},
        }
    }
    cluster.config_path.write_text(yaml.safe_dump(cluster.config, sort_keys=False))
    cluster.start()
    return cluster


@pytest.fixture
def secured(cluster_factory):
    return _secure(cluster_factory, 1)


async def test_tokens_open_what_their_principal_may_do(secured):
    with pytest.raises(Unauthorized):
        await AsyncProducer(secured.urls).start()
    async with AsyncProducer(secured.urls, token=WRITER) as producer:
        meta = await producer.send_and_wait("orders", b"paid", partition=1)
        with pytest.raises(Forbidden):
            await producer.send_and_wait("audit", b"nope")
    async with AsyncConsumer("orders", bootstrap=secured.urls, token=READER, group="billing") as consumer:
        got = await consumer.getmany(TopicPartition("orders", 1), timeout_ms=10_000)
        assert [r.offset for r in got[TopicPartition("orders", 1)]] == [meta.offset]
        await consumer.commit()
    async with AsyncConsumer(bootstrap=secured.urls, token=READER, group="other") as consumer:
        consumer.assign([TopicPartition("orders", 1)])
        with pytest.raises(Forbidden):
            await consumer.getmany(timeout_ms=10_000)  # reading the group's committed offset


async def test_commits_to_every_owner_with_auth(cluster_factory):
    cluster = _secure(cluster_factory, 3)
    async with AsyncConsumer("orders", bootstrap=cluster.urls, token=READER, group="billing") as consumer:
        for tp in sorted(consumer.assignment()):
            await consumer.commit({tp: 0})


async def test_blocking_clients_take_a_token(secured):
    with Producer(secured.urls, token=WRITER) as producer:
        assert producer.send_and_wait("orders", b"x", partition=0).offset == 0
    with Consumer(bootstrap=secured.urls, token=READER) as consumer:
        consumer.assign([TopicPartition("orders", 0)])
        assert next(iter(consumer)).value == b"x"


@pytest.fixture
def https_broker(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    url = f"https://127.0.0.1:{free_port()}"
    config = {
        "cluster": "tls",
        "brokers": [{"id": 1, "url": url, "data_dir": str(tmp_path / "broker-1")}],
        "topics": {"t": {"partitions": 2}},
        "tls": {"cert_file": "server.pem", "key_file": "server.key", "ca_file": "ca.pem"},
    }
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(config))
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    broker = Proc(["shoal.broker", "--config", str(tmp_path / "cluster.yaml"), "--id", "1"], tmp_path / "b.log", cwd=tmp_path)
    try:
        broker.wait_ready(url, context=context)
        yield tmp_path / "cluster.yaml", context
    finally:
        broker.stop()


async def test_https_with_the_cluster_ca(https_broker):
    config, context = https_broker
    async with AsyncProducer(config, ssl_context=context) as producer:
        meta = await producer.send_and_wait("t", b"secret", key="k")
    async with AsyncConsumer("t", bootstrap=config, ssl_context=context) as consumer:
        got = await consumer.getmany(TopicPartition("t", meta.partition), timeout_ms=10_000)
        assert [r.value for r in got[TopicPartition("t", meta.partition)]] == [b"secret"]
    # Without the CA the certificate is refused: no broker can be reached.
    producer = AsyncProducer(config)
    with pytest.raises(Exception, match="(?i)certificate"):
        await producer.start()
