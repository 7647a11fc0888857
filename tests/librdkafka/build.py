"""librdkafka's test runner, built from Debian's source package against Debian's librdkafka.

Only ``tests/test-runner`` is compiled: the library it links is the installed
``librdkafka1`` (the one kcat and Debian's other clients use), from the same source
version, so the build is the tests alone (about 2 CPU-minutes) and runs once per
machine: it is cached outside the clone, under ``$SHOAL_LIBRDKAFKA_CACHE`` (default
``~/.cache/shoal/librdkafka``), keyed by the source version.

Needs ``deb-src`` lines for Debian's archive (``apt-get source``), ``librdkafka-dev``,
``liblz4-dev``, ``libzstd-dev``, ``libssl-dev``, ``libsasl2-dev``, ``zlib1g-dev`` and a
C/C++ toolchain; ``.ci/run`` installs them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

PACKAGE = "librdkafka"


class BuildError(RuntimeError):
    """The test runner could not be built here; the message says what is missing."""


def cache_root() -> Path:
    return Path(os.environ.get("SHOAL_LIBRDKAFKA_CACHE", Path.home() / ".cache" / "shoal" / "librdkafka"))


def installed_version() -> str:
    """The source version of the installed librdkafka-dev (what the runner must match)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${source:Version}", "librdkafka-dev"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise BuildError("librdkafka-dev is not installed (apt-get install librdkafka-dev)") from None
    return out


def runner_path(version: str | None = None) -> Path:
    version = version or installed_version()
    upstream = version.split(":")[-1].rsplit("-", 1)[0]
    return cache_root() / version / f"{PACKAGE}-{upstream}" / "tests" / "test-runner"


def build(log=print) -> Path:
    """The path of a built ``test-runner``, building it first when it is not cached.

    One build at a time per machine (a lock file in the cache): .ci/run starts one in the
    background while the suite runs, and the test that needs the runner waits for it."""
    version = installed_version()
    runner = runner_path(version)
    if runner.exists():
        return runner
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if runner.exists():
            return runner
        return _build(version, runner, log)


def _build(version: str, runner: Path, log) -> Path:
    for tool in ("apt-get", "dpkg-source", "make", "gcc", "g++"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is not installed (apt-get install dpkg-dev build-essential)")
    work = runner.parents[2]
    work.mkdir(parents=True, exist_ok=True)
    source = runner.parents[1]
    if not (source / "configure").exists():
        log(f"librdkafka: apt-get source {PACKAGE}={version} into {work}")
        _run(["apt-get", "source", "-q", f"{PACKAGE}={version}"], work, "apt-get source (is there a deb-src line? see .ci/run)")
    if not (source / "Makefile.config").exists():
        log("librdkafka: configure")
        _run(["./configure"], source, "configure")
    log("librdkafka: building tests/test-runner against the installed library (minutes on a loaded machine)")
    # The tests' Makefile wants the in-tree static libraries first; -o tells make they are
    # there, so only the runner is compiled and -lrdkafka finds Debian's shared library.
    _run(
        ["make", f"-j{os.cpu_count() or 2}", "-o", "../src/librdkafka.a", "-o", "../src-cpp/librdkafka++.a",
         "-o", "interceptor_test", "test-runner"],
        source / "tests", "make test-runner",
    )  # fmt: skip
    if not runner.exists():
        raise BuildError(f"make finished but {runner} is missing")
    return runner


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise BuildError(f"{what} failed in {cwd} (exit {proc.returncode}):\n{tail}")


if __name__ == "__main__":
    print(build())
