"""``create_app``: the aiohttp application of one broker."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from shoal.broker.broker import Broker
from shoal.broker.handlers import add_routes
from shoal.broker.replication.handlers import add_replica_routes
from shoal.broker.replication.handoff_api import add_handoff_route
from shoal.broker.metrics import BrokerMetrics
from shoal.broker.state import BROKER, JSON_THREADS, METRICS
from shoal.router.server.auth import authenticate
from shoal.router.server.middlewares import MAX_BODY, LoadLimits, problem_errors, request_context
from shoal.router.server.openapi import build_openapi
from shoal.router.topology import Topology, TopologyError


def create_app(topology: Topology, broker_id: int, data_dir: Path) -> web.Application:
    """The broker's application; its logs open and recover when the app starts up."""
    limit = topology.settings.max_request_bytes
    kafka = topology.broker(broker_id).kafka_address
    if kafka is not None and topology.auth is not None and topology.tls is None and not topology.auth.kafka_sasl_plaintext:
        raise TopologyError([
            f"{topology.source}: brokers[id={broker_id}].kafka: with auth: the Kafka listener takes SASL/PLAIN "
            "passwords (tokens), which plain TCP would carry in clear: add a tls: section, or set "
            "auth.kafka_sasl_plaintext: true to accept that"
        ])
    broker = Broker(topology, broker_id, data_dir)
    limits = LoadLimits(lambda: broker.topology.settings)
    middlewares = [request_context, problem_errors, limits.admit]
    if topology.auth is not None:
        middlewares.append(authenticate(topology.auth))  # from the file at start-up, kept across epochs
    middlewares.append(limits.receive)
    app = web.Application(middlewares=middlewares, client_max_size=limit)
    app[BROKER] = broker
    app[METRICS] = BrokerMetrics(broker)
    app[MAX_BODY] = limit
    app[JSON_THREADS] = ThreadPoolExecutor(2, thread_name_prefix="shoal-json")  # threads start on first use
    openapi = build_openapi(f"shoal broker {broker_id}")

    async def serve_openapi(request: web.Request) -> web.Response:
        return web.json_response(openapi)

    async def storage(app: web.Application):
        await broker.start()
        listener = None
        if kafka is not None:
            from shoal.broker.kafka import import_listener

            listener = import_listener()(broker, *kafka)
            await listener.start()
        yield
        if listener is not None:
            await listener.stop()
        await broker.stop()
        app[JSON_THREADS].shutdown(cancel_futures=True)

    app.cleanup_ctx.append(storage)
    add_routes(app)
    add_replica_routes(app)
    add_handoff_route(app)
    app.router.add_get("/v1/openapi.json", serve_openapi)
    return app
