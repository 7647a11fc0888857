"""Server processes for the benchmarks: start on a free loopback port, poll until ready, always stop.

Every server the bench starts is a ``ServerProcess``: a child process with its own
temporary work dir, killed with the bench (PR_SET_PDEATHSIG) even when the bench
itself dies with SIGKILL, and stopped and cleaned up by ``stop()`` or ``with``.
Also here: the /proc readings (RSS, threads, CPU time) the resource runs report.
"""

from __future__ import annotations

import ctypes
import http.client
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class ServerError(RuntimeError):
    """A server could not be started or did not become ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready: Callable[[], bool], *, timeout: float, what: str, alive: Callable[[], bool] = lambda: True) -> float:
    """Poll ``ready`` until it returns true; return the seconds it took.

    Raises ServerError when ``timeout`` passes or ``alive`` turns false first.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        try:
            if ready():
                return time.monotonic() - start
        except OSError:
            pass
        if not alive():
            raise ServerError(f"{what} exited before it was ready")
        if time.monotonic() > deadline:
            raise ServerError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.005)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ServerProcess:
    """One server child process with a private temp dir.

    Subclasses set ``name`` and implement ``command()`` and ``is_ready()``. Not safe
    to share across threads; ``stop()`` is idempotent.
    """

    name = "server"
    ready_timeout = 120.0  # generous: the machine may be loaded

    def __init__(self, workdir: Path | None = None, *, keep_dir: bool = False) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"shoal-bench-{self.name}-"))
        self.keep_dir = keep_dir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log = None

    def command(self) -> Sequence[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.out"

    def start(self) -> float:
        """Spawn the server and wait until it serves; return the seconds that took."""
        started = time.monotonic()
        if self.spawn():
            self.wait_ready()
        return time.monotonic() - started

    def spawn(self) -> bool:
        """Start the process without waiting for it to serve; False when it already runs."""
        if self.proc is not None and self.proc.poll() is None:
            return False
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        return True

    def wait_ready(self) -> None:
        """Wait until the spawned server serves (stopping it when it does not in time)."""
        try:
            wait_until(self.is_ready, timeout=self.ready_timeout, what=self.name, alive=self.alive)
        except ServerError as exc:
            self.stop()
            raise ServerError(f"{exc}; last output: {self.tail()}") from None
        log.info("%s ready on 127.0.0.1:%d (pid %d)", self.name, self.port, self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed, the data dir stays."""
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def stop(self, *, remove: bool | None = None) -> None:
        """SIGTERM (SIGKILL after 10 s), then remove the temp dir unless told to keep it."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for 10s; killing it", self.name, self.proc.pid)
                self.proc.kill()
                self.proc.wait()
        self._close_log()
        if remove if remove is not None else (self._own_dir and not self.keep_dir):
            shutil.rmtree(self.dir, ignore_errors=True)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, chars: int = 600) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return text[-chars:].strip().replace("\n", " | ") or "(no output)"

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # /proc readings of the running server, for the resource runs.

    def rss_bytes(self) -> int:
        return proc_stat(self.proc.pid)["rss_bytes"]

    def threads(self) -> int:
        return proc_stat(self.proc.pid)["threads"]

    def cpu_seconds(self) -> float:
        return proc_stat(self.proc.pid)["cpu_seconds"]


def proc_stat(pid: int) -> dict:
    """RSS in bytes, thread count and user+system CPU seconds of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" closing comm, field 3 (state) is index 0: utime=14, stime=15,
    # num_threads=20, rss (pages)=24 in proc(5) numbering.
    return {
        "cpu_seconds": (int(fields[11]) + int(fields[12])) / _CLK_TCK,
        "threads": int(fields[17]),
        "rss_bytes": int(fields[21]) * _PAGE,
    }


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    """``GET path`` from a server on 127.0.0.1: the status and the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def which(binary: str, *extra_dirs: str) -> str | None:
    """Path of ``binary`` on PATH or in the sbin dirs Debian installs servers to."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", *extra_dirs])
    return shutil.which(binary, path=path)
