"""The image's HEALTHCHECK: healthy when ``GET /v1/health`` answers 200.

Stdlib only (the image has no curl). The port is the one the container's shoal
process was given with ``--listen HOST:PORT``, read from its command line, so a
compose file states each port once; ``SHOAL_HEALTH_URL`` overrides it.
"""

import os
import sys
import urllib.request
from pathlib import Path


def _listen_port() -> str:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        for i, arg in enumerate(argv):
            if arg == "--listen" and i + 1 < len(argv):
                return argv[i + 1].rpartition(":")[2]
            if arg.startswith("--listen="):
                return arg.rpartition(":")[2]
    return "9091"


def main() -> int:
    url = os.environ.get("SHOAL_HEALTH_URL") or f"http://127.0.0.1:{_listen_port()}/v1/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
