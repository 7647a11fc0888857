"""Broker and gateway processes started by hand, for configurations the harness does not make
(HTTPS, a gateway with its own token)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.harness import free_port, stop_process


class Proc:
    """One ``python -m ...`` process with its log file; ``stop()`` sends SIGTERM and waits."""

    def __init__(self, args: list[str], log_path: Path, *, env: dict | None = None, cwd: Path | None = None):
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})}, cwd=cwd,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, url: str, *, context: ssl.SSLContext | None = None, timeout: float = 20.0) -> None:
        """Poll ``url``/v1/health until it answers 200; fail with the log if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.log()}"
            try:
                with urllib.request.urlopen(url + "/v1/health", timeout=1, context=context) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not ready after {timeout}s:\n{self.log()}"
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc, 15)


def start_gateway(
    config: Path, root: Path, *, scheme: str = "http", env: dict | None = None, context: ssl.SSLContext | None = None
) -> tuple[Proc, str]:
    """A gateway on a free loopback port, run in ``root``, ready; returns it and its URL."""
    port = free_port()
    proc = Proc(["shoal.router.gateway.app", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
                root / f"gateway-{port}.log", env=env, cwd=root)
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        proc.wait_ready(url, context=context)
    except BaseException:
        proc.stop()
        raise
    return proc, url
