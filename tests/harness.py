"""Real broker processes on free loopback ports, for integration and fault tests."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml


def _port_range() -> range:
    """The ports this test process hands out: below Linux's ephemeral range (32768-60999),
    so no kernel-chosen client port lands on one, and split between pytest-xdist workers
    (gw0, gw1, ...), so two workers never pick the same port."""
    low, high = 10_000, 32_000
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker[2:].isdigit() or count < 2:
        return range(low, high)
    size = (high - low) // count
    start = low + int(worker[2:]) * size
    return range(start, start + size)


_HANDED_OUT: set[int] = set()
_RANDOM = random.Random()  # its own: tests that seed the global generator do not make it repeat


def free_port() -> int:
    """A loopback port nothing listens on, never the same one twice in this test run
    (chosen at random in this process's range, so that test runs in other checkouts
    rarely try the same one)."""
    ports = _port_range()
    while len(_HANDED_OUT) < len(ports):
        port = _RANDOM.choice(ports)
        if port in _HANDED_OUT:
            continue
        _HANDED_OUT.add(port)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free loopback port left in {ports}")


def http_json(method: str, url: str, body=None, *, timeout: float = 10.0, headers=None):
    """A blocking JSON call for test set-up: returns (status, parsed body)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw


class LocalCluster:
    """Brokers of a temporary cluster.yaml, each a real ``python -m shoal.broker`` process."""

    def __init__(
        self, root: Path, n_brokers: int = 3, topics: dict | None = None, *, name: str = "test", metadata: dict | None = None,
        kafka: bool = False,
        **defaults,
    ):
        self.root = root
        self.ports = {i: free_port() for i in range(1, n_brokers + 1)}
        self.kafka_ports = {i: free_port() for i in self.ports} if kafka else {}
        self.config = {
            "cluster": name,
            "epoch": 1,
            "defaults": {"partitions": 3, "flush": "interval", "flush_interval_ms": 50, **defaults},
            "brokers": [
                {"id": i, "url": f"http://127.0.0.1:{port}", "data_dir": str(root / f"broker-{i}")}
                | ({"kafka": f"127.0.0.1:{self.kafka_ports[i]}"} if kafka else {})
                for i, port in self.ports.items()
            ],
            "topics": {name: {"partitions": n} if isinstance(n, int) else n for name, n in (topics or {}).items()},
        }
        if metadata is not None:
            self.config["metadata"] = metadata
        self.config_path = root / "cluster.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.procs: dict[int, subprocess.Popen] = {}
        self._config_paths: dict[int, Path] = {}

    def write_broker_config(self, broker_id: int, config: dict) -> None:
        """Give broker ``broker_id`` a cluster.yaml of its own from its next start (a fault
        test routes a peer's url or the etcd endpoint through a proxy this way)."""
        path = self.root / f"cluster-{broker_id}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self._config_paths[broker_id] = path

    @property
    def urls(self) -> list[str]:
        return [self.url(i) for i in self.ports]

    @property
    def bootstrap(self) -> str:
        """The Kafka bootstrap servers (``kafka=True``): every broker's listener."""
        return ",".join(f"127.0.0.1:{port}" for port in self.kafka_ports.values())

    def url(self, broker_id: int) -> str:
        return f"http://127.0.0.1:{self.ports[broker_id]}"

    def log_path(self, broker_id: int) -> Path:
        return self.root / f"broker-{broker_id}.log"

    def start(self, broker_id: int | None = None, timeout: float = 20.0) -> None:
        ids = [broker_id] if broker_id is not None else list(self.ports)
        for i in ids:
            logf = open(self.log_path(i), "ab")
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-m", "shoal.broker", "--config", str(self._config_paths.get(i, self.config_path)), "--id", str(i)],
                stdout=logf, stderr=subprocess.STDOUT, cwd=self.root,
            )
            logf.close()
        for i in ids:
            self.wait_healthy(i, timeout)

    def wait_healthy(self, broker_id: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[broker_id]
            if proc.poll() is not None:
                raise RuntimeError(f"broker {broker_id} exited with {proc.returncode}:\n{self.tail(broker_id)}")
            try:
                status, _ = http_json("GET", self.url(broker_id) + "/v1/health", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"broker {broker_id} not healthy after {timeout}s:\n{self.tail(broker_id)}")

    def tail(self, broker_id: int, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path(broker_id).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self, broker_id: int) -> None:
        """SIGKILL: no flush, no clean shutdown."""
        proc = self.procs[broker_id]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def terminate(self, broker_id: int) -> int:
        proc = self.procs[broker_id]
        proc.send_signal(signal.SIGTERM)
        return proc.wait(15)

    def restart(self, broker_id: int, timeout: float = 20.0) -> None:
        if self.procs[broker_id].poll() is None:
            self.kill(broker_id)
        self.start(broker_id, timeout)

    def owner(self, topic: str, partition: int) -> int:
        _, cluster = http_json("GET", self.urls[0] + "/v1/cluster")
        return cluster["owners"][topic][partition]

    def stop(self) -> None:
        for i, proc in self.procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM ``proc`` if it runs, SIGKILL it after ``grace`` seconds, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")


class EtcdServer:
    """One real etcd (Debian's ``etcd-server``) on free loopback ports, its data in ``root``.

    ``fast`` shortens etcd's heartbeat and election timeout so that its minimum lease
    TTL is 1 s (with the defaults etcd raises any TTL below 2 s to 2 s).
    """

    def __init__(self, root: Path, *, fast: bool = True, cert: tuple[str, str] | None = None):
        self.root = root
        self.client_port, self.peer_port = free_port(), free_port()
        scheme = "https" if cert else "http"
        self.url = f"{scheme}://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.cmd = [
            "etcd", "--name", "test", "--data-dir", str(root / "data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}", "--log-level", "warn", "--logger", "zap",
        ]  # fmt: skip
        if fast:
            self.cmd += ["--heartbeat-interval", "10", "--election-timeout", "100"]
        if cert:
            self.cmd += ["--cert-file", cert[0], "--key-file", cert[1]]
        self.log_path = root / "etcd.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Poll etcd's own health check (it is true once it has a leader)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                # Only whether it is up: the TLS tests check certificates with the client itself.
                with urllib.request.urlopen(self.url + "/health", timeout=1, context=ssl._create_unverified_context()) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"etcd not healthy after {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
