"""Run one broker until SIGTERM or SIGINT: what `shoal broker start` and containers call."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from shoal.router.server.logs import configure_logging
from shoal.router.server.tls import serving_context
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
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> None:
    """Serve broker ``broker_id`` of the topology in ``config``; returns after a clean stop.

    HTTPS when ``tls_cert``/``tls_key`` are given or the file has a ``tls:`` section
    (the arguments win).

    Raises TopologyError for an invalid file, KeyError when the id is not in it, and
    TlsError when the certificate or key cannot be loaded.
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
    ssl_context = serving_context(topology.tls, tls_cert, tls_key)
    loop_kind = _install_uvloop()
    app = create_app(topology, broker_id, data)
    access = logging.getLogger("shoal.broker.access")
    scheme = "https" if ssl_context else "http"
    log.info("broker %d listening on %s://%s:%d (advertised %s, %s)", broker_id, scheme, host, port, spec.url, loop_kind)
    web.run_app(
        app,
        host=host,
        port=port,
        ssl_context=ssl_context,
        print=None,
        access_log=access if access.isEnabledFor(logging.DEBUG) or log_level == "debug" else None,
        handle_signals=True,
        handler_cancellation=True,  # a long-poll whose client went away stops waiting
        shutdown_timeout=5,
    )
    log.info("broker %d stopped", broker_id)
