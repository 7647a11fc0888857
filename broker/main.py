"""Run one broker until SIGTERM or SIGINT: what `shoal broker start` and containers call."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from shoal.router.logs import configure_logging
from shoal.router.topology import load_topology

log = logging.getLogger("shoal.broker")


def _install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def run(
    config: str | Path,
    broker_id: int,
    *,
    listen: str | None = None,
    data_dir: str | Path | None = None,
    log_level: str = "info",
    log_format: str = "text",
) -> None:
    """Serve broker ``broker_id`` of the topology in ``config``; returns after a clean stop.

    Raises TopologyError for an invalid file and KeyError when the id is not in it.
    """
    from shoal.broker.app import create_app

    configure_logging(log_level, log_format)
    topology = load_topology(config)
    spec = topology.broker(broker_id)
    host, port = spec.host, spec.port
    if listen:
        host, _, port_text = listen.rpartition(":")
        host, port = host or "0.0.0.0", int(port_text)
    data = Path(data_dir or spec.data_dir or f"data/broker-{broker_id}")
    loop_kind = _install_uvloop()
    app = create_app(topology, broker_id, data)
    access = logging.getLogger("shoal.broker.access")
    log.info("broker %d listening on %s:%d (advertised %s, %s)", broker_id, host, port, spec.url, loop_kind)
    web.run_app(
        app,
        host=host,
        port=port,
        print=None,
        access_log=access if access.isEnabledFor(logging.DEBUG) or log_level == "debug" else None,
        handle_signals=True,
        shutdown_timeout=5,
    )
    log.info("broker %d stopped", broker_id)
