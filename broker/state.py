"""Typed keys under which the broker application keeps its state (no module globals)."""

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from shoal.broker.broker import Broker
from shoal.broker.metrics import BrokerMetrics

BROKER = web.AppKey("broker", Broker)
METRICS = web.AppKey("metrics", BrokerMetrics)
# Threads for JSON fetches' decode and encode: off the event loop, and apart from the
# default executor, where fsyncs run, so a flood of JSON reads never delays a write.
JSON_THREADS = web.AppKey("json_threads", ThreadPoolExecutor)
