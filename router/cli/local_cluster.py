"""Every broker of a cluster.yaml (and, with ``metadata.start_local``, one etcd) as a
local child process: what ``shoal cluster up`` runs.

Each broker is ``python -m shoal.broker --config PATH --id N`` in its own session, so a
Ctrl-C at the terminal reaches only this supervisor, which then stops the brokers in
order: SIGTERM to all, a grace period, SIGKILL for any still running. On Linux every
broker also gets SIGTERM from the kernel if the supervisor itself dies (even by
SIGKILL), so no broker outlives it. A broker's stdout and stderr are appended to
``<data_dir>.log`` (``data/broker-1.log`` for the default ``data/broker-1``).

The local etcd is Debian's ``etcd`` binary (package ``etcd-server``), listening on the
one ``metadata.etcd`` endpoint (its peer port is the client port + 1, as etcd's own
2379/2380), with its data in ``data/etcd`` and its output in ``data/etcd.log``. It
starts first, must answer its health check before the brokers are waited for, and
stops last.

A broker that dies while the cluster runs is restarted, as a supervisor would (systemd's
``Restart=on-failure``): the others keep serving, one line says which broker died, how
(exit code or signal) and when it is back; in a replicated cluster, one more where its
partitions' leadership moved, and one when it is in sync again (``failover_report``). The delay doubles from ``RESTART_DELAY_S``
up to ``RESTART_DELAY_MAX_S``, so a broker that cannot start does not spin, and starts
again from ``RESTART_DELAY_S`` once a run lasted ``STABLE_AFTER_S``. A broker that
exits with code 0 was stopped on purpose (SIGTERM): it stays down, and the line says
how to start it again. etcd is not restarted: if it dies, everything stops.

Used from one event loop; not safe across threads.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from shoal.client.errors import ShoalError

from shoal.router.cli.failover_report import LeaderWatch, admin_client
from shoal.router.cli.session import AdminClient
from shoal.router.metadata.config import MetadataConfig
from shoal.router.metadata.etcd import EtcdClient
from shoal.router.topology import BrokerSpec, Topology

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
ETCD_DATA_DIR = "data/etcd"
NO_ETCD = (
    "metadata.start_local needs etcd, which is not installed: apt-get install etcd-server "
    "(or point metadata.etcd at a running etcd and set start_local: false)"
)

RESTART_DELAY_S = 1.0
RESTART_DELAY_MAX_S = 30.0
STABLE_AFTER_S = 60.0


class LocalClusterError(Exception):
    """The local cluster could not start (a port taken, a broker that died or hung before
    it was ready), or its etcd died."""


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
class ChildProcess:
    """One child of ``cluster up`` (``broker 2``, ``etcd``): its process and its log."""

    name: str
    log_path: Path
    log_offset: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, cmd: list[str], preexec: Callable[[], None] | None) -> None:
        """Start ``cmd`` in its own session, appending its output to the log."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"--- shoal cluster up: {self.name} starting at {time.ctime()} ---\n".encode())
            out.flush()
            self.log_offset = out.tell()
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=preexec,
            )
        log.debug("started %s as pid %d, log %s", self.name, self.proc.pid, self.log_path)

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
        return f"{self.name} {how}{when}; see {self.log_path}" + (f": {tail}" if tail else "")

    async def stop(self, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; reaps it."""
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
        await _reap([self], grace_s)


async def _reap(children: list[ChildProcess], grace_s: float) -> list[ChildProcess]:
    """Wait for signalled children, SIGKILL those still running after ``grace_s``."""
    deadline = time.monotonic() + grace_s
    while any(c.running for c in children) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    killed = []
    for c in children:
        if c.running:
            log.warning("%s did not stop within %gs; killing it", c.name, grace_s)
            c.proc.kill()
            killed.append(c)
    for c in children:
        if c.proc is not None:
            c.proc.wait()
    return killed


@dataclass
class BrokerProcess(ChildProcess):
    """One broker child: also its spec, and what its supervision needs to remember."""

    spec: BrokerSpec = field(kw_only=True)
    started_at: float = 0.0  # time.monotonic() of the last start
    restarts: int = 0
    next_delay: float = RESTART_DELAY_S
    restart_at: float | None = None  # when the pending restart is due
    answered: bool = True  # answered its health check since the last restart
    left_down: bool = False  # exited with code 0: reported, not restarted


class LocalEtcd(ChildProcess):
    """The one etcd of ``metadata.start_local``, on ``metadata.etcd[0]``."""

    def __init__(self, metadata: MetadataConfig, data_dir: str = ETCD_DATA_DIR):
        super().__init__("etcd", Path(data_dir + ".log"))
        self.url = metadata.etcd[0]
        self.data_dir = data_dir
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 2379
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.peer_url = f"http://{host}:{self.port + 1}"

    def command(self) -> list[str]:
        binary = shutil.which("etcd")
        if binary is None:
            raise LocalClusterError(NO_ETCD)
        return [
            binary, "--name", "shoal", "--data-dir", self.data_dir,
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"shoal={self.peer_url}",
        ]  # fmt: skip

    async def wait_ready(self, deadline: float) -> None:
        """Return once etcd reports itself healthy (it has a leader).

        Raises:
            LocalClusterError: etcd exited, or was not healthy by ``deadline`` (monotonic).
        """
        async with EtcdClient([self.url], request_timeout_s=1) as etcd:
            while not await etcd.healthy():
                if not self.running:
                    raise LocalClusterError(self.describe_exit(" before it was ready"))
                if time.monotonic() > deadline:
                    raise LocalClusterError(f"etcd did not answer {self.url}/health in time; see {self.log_path}")
                await asyncio.sleep(0.1)


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
        self.brokers = [BrokerProcess(f"broker {spec.id}", log_path(spec), spec=spec) for spec in topology.brokers]
        metadata = topology.metadata
        self.etcd = LocalEtcd(metadata) if metadata is not None and metadata.start_local else None
        self.leaders = LeaderWatch(metadata.lease_ttl_ms / 1000) if metadata is not None else None

    def check_ports(self) -> None:
        """Fail early, naming the process, when a port is taken (by an earlier cluster?)."""
        ports = [(b.spec.host, b.spec.port, f"broker {b.spec.id} ({b.spec.url})") for b in self.brokers]
        if self.etcd is not None:
            ports.append((self.etcd.host, self.etcd.port, f"etcd ({self.etcd.url})"))
            ports.append((self.etcd.host, self.etcd.port + 1, f"etcd's peers ({self.etcd.peer_url})"))
        for host, port, what in ports:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise LocalClusterError(
                            f"port {port} of {what} is already in use; is a cluster already running? (shoal cluster info)"
                        ) from None
                    # Anything else (a host not on this machine) is the process's own to report.

    def start(self) -> None:
        """Spawn etcd (if local) and every broker.

        Raises:
            LocalClusterError: a port is taken, or etcd is needed and not installed.
        """
        etcd_cmd = self.etcd.command() if self.etcd is not None else None
        self.check_ports()
        preexec = _die_with_parent()
        if self.etcd is not None:
            self.etcd.spawn(etcd_cmd, preexec)
        for b in self.brokers:
            self._spawn(b, preexec)

    def _spawn(self, b: BrokerProcess, preexec: Callable[[], None] | None) -> None:
        # The preexec hook runs between fork and exec, where a lock held by another thread
        # would never be released; it only calls prctl, so idle threads (an executor) are fine.
        cmd = [
            sys.executable, "-m", "shoal.broker",
            "--config", self.config_path, "--id", str(b.spec.id), "--log-level", self.log_level,
        ]
        b.spawn(cmd, preexec)
        b.started_at = time.monotonic()

    async def wait_ready(self) -> None:
        """Return once every broker answers its health check as itself.

        Raises:
            LocalClusterError: a broker exited, or did not answer within the deadline.
        """
        deadline = time.monotonic() + self.ready_timeout_s
        if self.etcd is not None:
            await self.etcd.wait_ready(deadline)
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

    async def supervise(self, stop: asyncio.Event, report: Callable[[str], None]) -> ChildProcess | None:
        """Restart brokers that die until ``stop`` is set (None) or etcd exits (etcd),
        calling ``report`` with one line per event (a broker died, a broker is back)."""
        api = admin_client()
        try:
            while not stop.is_set():
                if self.etcd is not None and not self.etcd.running:
                    return self.etcd
                for b in self.brokers:
                    await self._tend(b, api, report)
                if self.leaders is not None:
                    await self.leaders.poll(api, [b.spec.url for b in self.brokers if b.running and b.answered], report)
                try:
                    await asyncio.wait_for(stop.wait(), 0.2)
                except TimeoutError:
                    pass
            return None
        finally:
            await api.close()

    async def _tend(self, b: BrokerProcess, api: AdminClient, report: Callable[[str], None]) -> None:
        now = time.monotonic()
        if b.running:
            if not b.answered:
                try:
                    b.answered = (await api.health(b.spec.url)).get("broker_id") == b.spec.id
                except ShoalError:
                    return
                if b.answered:
                    report(f"broker {b.spec.id} is back at {b.spec.url} (pid {b.proc.pid}, restart {b.restarts})")
                    if self.leaders is not None:
                        self.leaders.back(b.spec.id)
        elif b.restart_at is None:
            if self.leaders is not None and not b.left_down:
                self.leaders.died(b.spec.id)
            if b.proc.returncode == 0:
                if not b.left_down:
                    b.left_down = True
                    report(
                        f"{b.describe_exit()}; it was stopped on purpose and stays down "
                        f"({self._impact(stopped=True)}): start it with "
                        f"`shoal broker start --id {b.spec.id} --config {self.config_path}`"
                    )
                return
            if now - b.started_at >= STABLE_AFTER_S:
                b.next_delay = RESTART_DELAY_S
            b.restart_at = now + b.next_delay
            report(f"{b.describe_exit()}; {self._impact(stopped=False)}; restarting it in {b.next_delay:g}s")
            b.next_delay = min(b.next_delay * 2, RESTART_DELAY_MAX_S)
        elif now >= b.restart_at:
            b.restart_at = None
            b.restarts += 1
            b.answered = False
            self._spawn(b, _die_with_parent())

    def _impact(self, *, stopped: bool) -> str:
        """What a broker's exit means for its partitions (a clean stop revokes its lease)."""
        if self.leaders is None:
            return "its partitions are unavailable" + ("" if stopped else " until it is back")
        return "the partitions it led get new leaders " + ("now" if stopped else "once its etcd lease lapses")

    async def stop(self) -> list[int]:
        """SIGTERM every running broker, SIGKILL those still running after the grace
        period, and reap them all; then the same for etcd, last, as brokers may still
        be using it on their way out. Returns the broker ids that had to be killed."""
        for b in self.brokers:
            if b.running:
                b.proc.send_signal(signal.SIGTERM)
        killed = [b.spec.id for b in await _reap(self.brokers, self.grace_s)]
        if self.etcd is not None:
            await self.etcd.stop(self.grace_s)
        return killed
