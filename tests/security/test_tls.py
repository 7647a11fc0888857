"""HTTPS on a real broker and gateway, with a CA and certificate made by the test (trustme)."""

from __future__ import annotations

import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import aiohttp
import pytest
import trustme
import yaml

from shoal.client.records import decode_fetch, encode_batch
from tests.harness import free_port
from tests.security.procs import Proc, start_gateway

BATCH = "application/vnd.shoal.batch"


@pytest.fixture
def tls_cluster(tmp_path):
    """One broker serving HTTPS from cluster.yaml's tls: section; yields (config, url, client context, ca path)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    config = {
        "cluster": "tls",
        "brokers": [{"id": 1, "url": url, "data_dir": str(tmp_path / "broker-1")}],
        "topics": {"t": {"partitions": 1, "flush": "always"}},
        "tls": {"cert_file": "server.pem", "key_file": "server.key", "ca_file": "ca.pem"},
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    broker = Proc(["shoal.broker", "--config", str(path), "--id", "1"], tmp_path / "broker-1.log", cwd=tmp_path)
    try:
        broker.wait_ready(url, context=context)
        yield path, url, context
    finally:
        broker.stop()


async def test_records_round_trip_over_https(tls_cluster):
    """A client that trusts the CA produces and fetches; the stored frame comes back byte for byte."""
    _, url, context = tls_cluster
    body = encode_batch([(b"k", b"secret value", None, 1)])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
        async with http.post(url + "/v1/topics/t/partitions/0/records", data=body, headers={"Content-Type": BATCH}) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(url + "/v1/topics/t/partitions/0/records?offset=0", headers={"Accept": BATCH}) as resp:
            fetched = await resp.read()
    assert fetched[16:] == body[16:]
    assert [r.value for r in decode_fetch("t", 0, fetched)] == [b"secret value"]


def test_plain_http_and_untrusted_clients_get_nothing(tls_cluster):
    """Plain HTTP to the TLS port is refused, and a client without the CA fails verification."""
    _, url, _ = tls_cluster
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(url.replace("https", "http") + "/v1/health", timeout=5).read()
    with pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen(url + "/v1/health", timeout=5, context=ssl.create_default_context())
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)


async def test_gateway_serves_https_and_trusts_the_brokers_ca(tls_cluster):
    """The gateway serves HTTPS with the same tls: section and forwards to the https broker via ca_file."""
    config, _, context = tls_cluster
    proc, url = start_gateway(config, config.parent, scheme="https", context=context)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            async with http.post(url + "/v1/topics/t/records", json={"records": [{"value": "via gateway"}]}) as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(url + "/v1/topics/t/partitions/0/records?offset=0") as resp:
                got = await resp.json()
        assert [r["value"] for r in got["records"]] == ["via gateway"]
    finally:
        proc.stop()


def test_a_missing_certificate_is_one_line_and_exit_1(tls_cluster, tmp_path):
    """A broker whose key file is missing says which file in one line and exits 1."""
    config, _, _ = tls_cluster
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.broker", "--config", str(config), "--id", "1",
         "--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "missing.key"), "--listen", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"unable to start broker 1: cannot read {tmp_path / 'missing.key'}: no such file"
    assert "Traceback" not in proc.stderr
