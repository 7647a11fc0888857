"""Every broker of a cluster.yaml as a local child process: what ``shoal cluster up`` runs.

Each broker is ``python -m shoal.broker --config PATH --id N`` in its own session, so a
Ctrl-C at the terminal reaches only this supervisor, which then stops the brokers in
order: SIGTERM to all, a grace period, SIGKILL for any still running. On Linux every
broker also gets SIGTERM from the kernel if the supervisor itself dies (even by
SIGKILL), so no broker outlives it. A broker's stdout and stderr are appended to
``<data_dir>.log`` (``data/broker-1.log`` for the default ``data/broker-1``).

Used from one event loop; not safe across threads.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shoal.client.errors import ShoalError

from shoal.router.cli.session import AdminClient
from shoal.router.topology import BrokerSpec, Topology

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class LocalClusterError(Exception):
    """The local cluster could not start or a broker of it stopped."""


def log_path(spec: BrokerSpec) -> Path:
    """Where ``cluster up`` writes a broker's output: beside its data dir."""
    data = Path(spec.data_dir)
    return data.with_name(data.name + ".log")


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec function asking Linux to SIGTERM the child when this process dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class BrokerProcess:
    """One broker child: its spec, its process and where its output goes."""

    spec: BrokerSpec
    log_path: Path
    log_offset: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def last_log_line(self) -> str:
        """The last non-empty line this run wrote to the log, for error messages."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines()]
        except OSError:
            return ""
        return next((line for line in reversed(lines) if line), "")

    def describe_exit(self, when: str = "") -> str:
        """``broker 2 exited with code 1<when>; see data/broker-2.log: <its last line>``."""
        code = self.proc.returncode if self.proc else None
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        tail = self.last_log_line()
        return f"broker {self.spec.id} {how}{when}; see {self.log_path}" + (f": {tail}" if tail else "")


class LocalCluster:
    """Starts, watches and stops every broker of a topology on this machine.

    Args:
        config_path: the cluster.yaml the brokers load (passed to them as is).
        topology: that file, loaded (so it is known to be valid).
        log_level: the brokers' ``--log-level``.
        ready_timeout_s: how long every broker has to answer ``GET /v1/health``.
        grace_s: how long brokers have to stop after SIGTERM before SIGKILL.
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        topology: Topology,
        *,
        log_level: str = "info",
        ready_timeout_s: float = 30.0,
        grace_s: float = 10.0,
    ):
        self.config_path = os.fspath(config_path)
        self.topology = topology
        self.log_level = log_level
        self.ready_timeout_s = ready_timeout_s
        self.grace_s = grace_s
        self.brokers = [BrokerProcess(spec, log_path(spec)) for spec in topology.brokers]

    def check_ports(self) -> None:
        """Fail early, naming the broker, when a port is taken (by an earlier cluster?)."""
        for b in self.brokers:
            with socket.socket(socket.AF_INET6 if ":" in b.spec.host else socket.AF_INET) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((b.spec.host, b.spec.port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise LocalClusterError(
                            f"port {b.spec.port} of broker {b.spec.id} ({b.spec.url}) is already in use; "
                            "is a cluster already running? (shoal cluster info)"
                        ) from None
                    # Anything else (a host not on this machine) is the broker's to report.

    def start(self) -> None:
        """Spawn every broker (before any thread exists: the preexec hook needs that)."""
        self.check_ports()
        preexec = _die_with_parent()
        for b in self.brokers:
            b.log_path.parent.mkdir(parents=True, exist_ok=True)
            cmd = [
                sys.executable, "-m", "shoal.broker",
                "--config", self.config_path, "--id", str(b.spec.id), "--log-level", self.log_level,
            ]
            with open(b.log_path, "ab") as out:
                out.write(f"--- shoal cluster up: broker {b.spec.id} starting at {time.ctime()} ---\n".encode())
                out.flush()
                b.log_offset = out.tell()
                b.proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, preexec_fn=preexec,
                )
            log.debug("started broker %d as pid %d, log %s", b.spec.id, b.proc.pid, b.log_path)

    async def wait_ready(self) -> None:
        """Return once every broker answers its health check as itself.

        Raises:
            LocalClusterError: a broker exited, or did not answer within the deadline.
        """
        deadline = time.monotonic() + self.ready_timeout_s
        pending = {b.spec.id: b for b in self.brokers}
        api = AdminClient(request_timeout_ms=1000)
        try:
            while pending:
                for broker_id, b in list(pending.items()):
                    if not b.running:
                        raise LocalClusterError(b.describe_exit(" before it was ready"))
                    try:
                        health = await api.health(b.spec.url)
                    except ShoalError:
                        continue
                    if health.get("broker_id") != broker_id:
                        raise LocalClusterError(
                            f"{b.spec.url} answers as broker {health.get('broker_id')}, not {broker_id}"
                        )
                    del pending[broker_id]
                if pending and time.monotonic() > deadline:
                    b = next(iter(pending.values()))
                    raise LocalClusterError(
                        f"broker {b.spec.id} did not answer {b.spec.url}/v1/health within "
                        f"{self.ready_timeout_s:g}s; see {b.log_path}"
                    )
                if pending:
                    await asyncio.sleep(0.1)
        finally:
            await api.close()

    async def watch(self, stop: asyncio.Event) -> BrokerProcess | None:
        """Wait until ``stop`` is set (None) or a broker exits (that broker)."""
        while True:
            for b in self.brokers:
                if not b.running:
                    return b
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
                return None
            except TimeoutError:
                pass

    async def stop(self) -> list[int]:
        """SIGTERM every running broker, SIGKILL those still running after the grace
        period, and reap them all. Returns the ids that had to be killed."""
        alive = [b for b in self.brokers if b.running]
        for b in alive:
            b.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while any(b.running for b in alive) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        killed = []
        for b in alive:
            if b.running:
                log.warning("broker %d did not stop within %gs; killing it", b.spec.id, self.grace_s)
                b.proc.kill()
                killed.append(b.spec.id)
        for b in self.brokers:
            if b.proc is not None:
                b.proc.wait()
        return killed
