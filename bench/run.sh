#!/usr/bin/env bash
# The benchmark report in one command, from a clone: python -m bench ARGS inside .venv.
# Creates .venv when missing and installs shoal with its `bench` extra (redis-py,
# hiredis, nats-py, matplotlib, py-spy) when one of them is missing; the bench
# itself apt-get installs redis-server and nats-server when it runs as root.
#   bench/run.sh              the full run (about 4 minutes, 5 GB restart log)
#   bench/run.sh --quick      the 15-second smoke run
#   bench/run.sh --client-paths-before REV   also time REV's client paths (before/after)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import shoal.client, redis, hiredis, nats, matplotlib' 2>/dev/null || [ ! -x .venv/bin/py-spy ]; then
  .venv/bin/python -m pip install -q -e ".[dev,bench]"
fi
exec .venv/bin/python -m bench "$@"
