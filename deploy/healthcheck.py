"""The images' HEALTHCHECK: healthy when the process's health URL answers 200.

The standard library and PyYAML only (the images have no curl, and importing shoal
itself takes seconds on a busy machine, every few seconds). ``SHOAL_HEALTH_URL`` names
the URL outright (the etcd image sets it: etcd's ``/health`` answers 503 without a
leader). Otherwise it is ``GET /v1/health`` of the container's shoal process: on the
port given with ``--listen HOST:PORT``, else, for ``broker start --id N`` without
``--listen``, at broker N's ``url`` in its cluster.yaml (``SHOAL_CONFIG`` or
``--config``), so a compose file states each broker's address once, in that file.
"""

import os
import sys
import urllib.request
from pathlib import Path


def _shoal_argv() -> list[str]:
    """The command line of the container's shoal process (the one with ``start`` in it)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "start" in argv:
            return argv
    return []


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.partition("=")[2]
    return None


def _health_url() -> str:
    argv = _shoal_argv()
    listen = _option(argv, "--listen")
    if listen is not None:
        return f"http://127.0.0.1:{listen.rpartition(':')[2]}/v1/health"
    broker_id = _option(argv, "--id")
    if broker_id is not None:
        import yaml

        config = _option(argv, "--config") or os.environ.get("SHOAL_CONFIG", "cluster.yaml")
        with open(config, "rb") as f:
            brokers = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["brokers"]
        return next(b["url"] for b in brokers if str(b["id"]) == broker_id).rstrip("/") + "/v1/health"
    return "http://127.0.0.1:9091/v1/health"


def main() -> int:
    try:
        url = os.environ.get("SHOAL_HEALTH_URL") or _health_url()
    except Exception as exc:  # noqa: BLE001 - an unreadable cluster.yaml is unhealthy, said in one line
        print(f"no health URL: {exc}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
