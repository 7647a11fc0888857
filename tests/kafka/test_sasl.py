"""SASL/PLAIN and permissions on the Kafka listener: real brokers with ``auth:``, real clients
(confluent-kafka, kcat), the same principals and tokens as the HTTP API."""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess
import time

import pytest
import trustme
import yaml
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as CKTopicPartition
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
from kio.schema.sasl_handshake.v0.request import SaslHandshakeRequest as SaslHandshakeV0
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

from shoal.broker.app import create_app
from shoal.broker.kafka.codec import build
from shoal.router.server.auth import hash_token
from shoal.router.topology import TopologyError, load_topology, parse_topology
from tests.harness import LocalCluster, free_port, http_json
from tests.kafka.helpers import poll_messages
from tests.kafka.wire import decode_response, read_frame, request_bytes
from tests.security.procs import Proc

TOKENS = {"ops": "o" * 43, "app": "a" * 43, "reader": "r" * 43}
PRINCIPALS = {
    "ops": {"token_hash": hash_token(TOKENS["ops"]), "admin": True},
    "app": {"token_hash": hash_token(TOKENS["app"]), "produce": ["secure"], "consume": ["secure"], "groups": ["app-*"]},
    "reader": {"token_hash": hash_token(TOKENS["reader"]), "consume": ["secure"], "groups": ["readers"]},
}
N = 30


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """Three brokers with auth: and listeners taking SASL/PLAIN over plain TCP (allowed explicitly)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("kafka-sasl"), 3, {"secure": 3, "other": 1}, kafka=True)
    cluster.config["auth"] = {"kafka_sasl_plaintext": True, "principals": PRINCIPALS}
    cluster.config_path.write_text(yaml.safe_dump(cluster.config, sort_keys=False))
    try:
        cluster.start(timeout=60)
        yield cluster
    finally:
        cluster.stop()


def sasl(principal: str, password: str | None = None) -> dict:
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN",
            "sasl.username": principal, "sasl.password": password or TOKENS[principal]}


def test_confluent_kafka_authenticates_produces_consumes_as_a_group_and_commits(secured):
    producer = Producer({"bootstrap.servers": secured.bootstrap, "enable.idempotence": True, **sasl("app")})
    for i in range(N):
        producer.produce("secure", key=f"k{i}".encode(), value=f"v{i}".encode())
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": secured.bootstrap, "group.id": "app-billing", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, **sasl("app")})
    consumer.subscribe(["secure"])
    got = poll_messages(consumer, N)
    consumer.commit(asynchronous=False)
    committed = {tp.partition: tp.offset for tp in consumer.committed([CKTopicPartition("secure", p) for p in range(3)], timeout=20)}
    consumer.close()
    assert sorted(m.value() for m in got) == sorted(f"v{i}".encode() for i in range(N))
    ends = {p: sum(1 for m in got if m.partition() == p) for p in range(3)}
    assert committed == ends
    # the same commits over HTTP, with the same principal's token (commits of partitions led
    # elsewhere went there with it)
    bearer = {"Authorization": f"Bearer {TOKENS['app']}"}
    topology = load_topology(secured.config_path)
    for p, end in ends.items():
        url = secured.url(topology.owner("secure", p).id)
        status, body = http_json("GET", f"{url}/v1/groups/app-billing/topics/secure/partitions/{p}/offset", headers=bearer)
        assert (status, body["offset"]) == (200, end or None)


def test_a_principal_gets_kafka_s_authorization_errors(secured):
    errors = []
    producer = Producer({"bootstrap.servers": secured.bootstrap, **sasl("reader"),
                         "on_delivery": lambda err, msg: errors.append(err)})
    producer.produce("secure", value=b"nope")
    producer.flush(30)
    assert [e.code() for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
    consumer = Consumer({"bootstrap.servers": secured.bootstrap, "group.id": "app-stolen", "auto.offset.reset": "earliest",
                         **sasl("reader")})
    consumer.subscribe(["secure"])
    deadline = time.monotonic() + 30
    code = None
    while code is None and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is not None:
            code = msg.error().code()
    consumer.close()
    assert code == KafkaError.GROUP_AUTHORIZATION_FAILED
    listed = Consumer({"bootstrap.servers": secured.bootstrap, "group.id": "readers", **sasl("reader")})
    topics = listed.list_topics(timeout=20).topics
    listed.close()
    assert set(topics) == {"secure"}  # "other" is not the reader's to see


def wire_session(cluster, principal: str | None, password: str | None = None, mechanism: str = "PLAIN"):
    """A socket that went through SaslHandshake (and SaslAuthenticate, given a principal);
    returns (socket, handshake answer, authenticate answer)."""
    sock = socket.create_connection(("127.0.0.1", cluster.kafka_ports[1]), timeout=10)
    sock.sendall(request_bytes(build(SaslHandshakeRequest, {"mechanism": mechanism}), correlation_id=1))
    shake = decode_response(read_frame(sock), 17, 1)[1]
    answer = None
    if principal is not None:
        token = password or TOKENS[principal]
        sock.sendall(request_bytes(build(SaslAuthenticateRequest, {"auth_bytes": f"\0{principal}\0{token}".encode()}), correlation_id=2))
        frame = read_frame(sock)
        answer = decode_response(frame, 36, 2)[1] if frame is not None else None
    return sock, shake, answer


def test_sasl_on_the_wire(secured):
    metadata = request_bytes(build(MetadataRequest, {"topics": None}), correlation_id=3)
    with socket.create_connection(("127.0.0.1", secured.kafka_ports[1]), timeout=10) as sock:
        sock.sendall(request_bytes(build(ApiVersionsRequest, {"client_software_name": "t", "client_software_version": "1"})))
        assert read_frame(sock) is not None  # open before authentication
        sock.sendall(metadata)
        assert read_frame(sock) is None  # anything else closes the connection
    sock, shake, _ = wire_session(secured, None, mechanism="SCRAM-SHA-256")
    with sock:
        assert (int(shake.error_code), list(shake.mechanisms)) == (33, ["PLAIN"])  # UNSUPPORTED_SASL_MECHANISM
        assert read_frame(sock) is None
    sock, shake, answer = wire_session(secured, "app", "a" * 42 + "b")
    with sock:
        assert int(shake.error_code) == 0 and int(answer.error_code) == 58  # SASL_AUTHENTICATION_FAILED
        assert read_frame(sock) is None
    sock, _, answer = wire_session(secured, "reader", TOKENS["app"])  # another principal's token
    with sock:
        assert int(answer.error_code) == 58
    sock, _, answer = wire_session(secured, "ops")
    with sock:
        assert int(answer.error_code) == 0
        sock.sendall(metadata)
        topics = decode_response(read_frame(sock), 3, 12)[1].topics
        assert sorted(t.name for t in topics) == ["other", "secure"]  # admin sees everything
    with socket.create_connection(("127.0.0.1", secured.kafka_ports[2]), timeout=10) as sock:
        # SaslHandshake v0: the PLAIN message follows as a bare frame, answered by an empty one
        sock.sendall(request_bytes(build(SaslHandshakeV0, {"mechanism": "PLAIN"}), correlation_id=1))
        assert int(decode_response(read_frame(sock), 17, 0)[1].error_code) == 0
        message = f"\0app\0{TOKENS['app']}".encode()
        sock.sendall(struct.pack(">i", len(message)) + message)
        assert read_frame(sock) == b""
        sock.sendall(metadata)
        assert [t.name for t in decode_response(read_frame(sock), 3, 12)[1].topics] == ["secure"]


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed (.ci/run installs it)")
def test_kcat_with_sasl_plain(secured):
    def kcat(*args, principal="app", password=None, **kw):
        auth = [f"-X{k}={v}" for k, v in sasl(principal, password).items()]
        return subprocess.run(["kcat", "-b", secured.bootstrap, *auth, *args], capture_output=True, timeout=60, **kw)

    done = kcat("-P", "-t", "secure", "-p", "0", input=b"from kcat\n")
    assert done.returncode == 0, done.stderr
    out = kcat("-C", "-t", "secure", "-p", "0", "-o", "-1", "-e", "-f", "%s\n")
    assert out.stdout.decode().split("\n")[0] == "from kcat", out.stderr
    refused = kcat("-L", "-m", "2", password="wrong" * 9)
    assert refused.returncode != 0 and b"SASL authentication error: authentication failed" in refused.stderr


def test_a_broker_with_auth_and_no_tls_needs_the_plaintext_opt_in(tmp_path):
    config = {
        "cluster": "c", "brokers": [{"id": 1, "url": "http://127.0.0.1:9091", "kafka": "127.0.0.1:9191"}],
        "auth": {"principals": PRINCIPALS},
    }
    with pytest.raises(TopologyError, match="add a tls: section, or set auth.kafka_sasl_plaintext: true"):
        create_app(parse_topology(yaml.safe_dump(config)), 1, tmp_path / "data")
    assert not (tmp_path / "data").exists()  # nothing was opened or written
    config["auth"]["kafka_sasl_plaintext"] = True
    create_app(parse_topology(yaml.safe_dump(config)), 1, tmp_path / "data")


def test_sasl_ssl_with_the_broker_s_certificate(tmp_path):
    """With tls: the listener speaks TLS too: SASL_SSL with the cluster's CA."""
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port, kafka = free_port(), free_port()
    config = {
        "cluster": "c", "topics": {"secure": {"partitions": 1}},
        "brokers": [{"id": 1, "url": f"https://127.0.0.1:{port}", "kafka": f"127.0.0.1:{kafka}", "data_dir": "data"}],
        "auth": {"principals": PRINCIPALS},
        "tls": {"cert_file": "server.pem", "key_file": "server.pem", "ca_file": "ca.pem"},
    }
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(config))
    broker = Proc(["shoal.broker", "--config", "cluster.yaml", "--id", "1"], tmp_path / "broker.log", cwd=tmp_path)
    try:
        broker.wait_ready(f"https://127.0.0.1:{port}", context=ssl.create_default_context(cafile=str(tmp_path / "ca.pem")), timeout=60)
        tls = {"bootstrap.servers": f"127.0.0.1:{kafka}", "security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN",
               "sasl.username": "app", "sasl.password": TOKENS["app"], "ssl.ca.location": str(tmp_path / "ca.pem")}
        producer = Producer(tls)
        producer.produce("secure", value=b"over tls")
        assert producer.flush(30) == 0
        consumer = Consumer({**tls, "group.id": "app-tls", "auto.offset.reset": "earliest"})
        consumer.subscribe(["secure"])
        assert [m.value() for m in poll_messages(consumer, 1)] == [b"over tls"]
        consumer.close()
        with socket.create_connection(("127.0.0.1", kafka), timeout=10) as sock:  # plain TCP gets nothing
            sock.sendall(request_bytes(build(ApiVersionsRequest, {"client_software_name": "t", "client_software_version": "1"})))
            try:
                assert read_frame(sock) is None
            except ConnectionResetError:
                pass
    finally:
        broker.stop()
