"""The peers shoal is compared with: Redis Streams and NATS JetStream, run fresh per bench.

Each runs from Debian's package on a free loopback port with its data in a temp dir,
configured for durability comparable to shoal's default flush policy:

- Redis: AOF on with ``appendfsync everysec`` (RDB snapshots off), so an acknowledged
  XADD reaches the disk within about a second, like a 1 s flush interval.
- NATS: JetStream with file storage in a temp store dir. NATS 2.9 acknowledges a
  publish once it is written to the store file (the OS page cache) and fsyncs in the
  background, the same promise as a timed flush.

``install_hint``/``ensure_binary`` install the packages with apt-get when they are
missing and the bench runs as root; otherwise the peer is skipped with the reason.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import subprocess

from .procs import ServerProcess, free_port, which

log = logging.getLogger(__name__)

PACKAGES = {"redis-server": "redis-server", "nats-server": "nats-server"}


def ensure_binary(binary: str, *, install: bool = True) -> tuple[str | None, str]:
    """Find ``binary``, installing its Debian package when allowed and possible.

    Returns ``(path, "")``, or ``(None, reason)`` when the peer must be skipped.
    """
    path = which(binary)
    if path:
        return path, ""
    package = PACKAGES[binary]
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, f"{binary} not found; install it with: apt-get install {package}"
    log.info("%s not found; installing Debian package %s", binary, package)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", package]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return None, f"{binary} not found and `{' '.join(cmd)}` failed: {done.stderr.strip()[-300:]}"
    path = which(binary)
    return (path, "") if path else (None, f"{binary} still missing after installing {package}")


class RedisServer(ServerProcess):
    """redis-server with AOF everysec in a temp dir."""

    name = "redis"

    def __init__(self, binary: str, **kw) -> None:
        super().__init__(**kw)
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def command(self):
        return [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")


class NatsServer(ServerProcess):
    """nats-server with JetStream file storage in a temp store dir."""

    name = "nats"

    def __init__(self, binary: str, **kw) -> None:
        super().__init__(**kw)
        self.binary = binary
        self.monitor_port = free_port()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self):
        return [
            self.binary,
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-js",
            "-sd", str(self.dir / "store"),
        ]  # fmt: skip

    def is_ready(self) -> bool:
        """``/healthz`` answers ok only once JetStream is up as well."""
        conn = http.client.HTTPConnection("127.0.0.1", self.monitor_port, timeout=1)
        try:
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            return resp.status == 200 and json.loads(resp.read()).get("status") == "ok"
        finally:
            conn.close()
