"""Typed keys under which the broker application keeps its state (no module globals)."""

from aiohttp import web

from shoal.broker.broker import Broker
from shoal.broker.metrics import BrokerMetrics

BROKER = web.AppKey("broker", Broker)
METRICS = web.AppKey("metrics", BrokerMetrics)
