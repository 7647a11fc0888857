"""Routes of the console: its page and static files, and the JSON the page reads.

Everything is GET: the console is read-only (writes stay with the CLI and the API).
With ``auth:`` configured the page and its files are open (they hold no data) and
every ``/console/api/`` call needs a token (router.server.auth); lists hold only the topics
the principal may consume or produce and the groups it may use, and a topic, a group
or a record browse it may not see is 403 FORBIDDEN.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from shoal.client.errors import InvalidRequest
from shoal.client.names import check_name
from shoal.router.server.auth import PRINCIPAL
from shoal.router.server.params import path_partition, query_int

from . import views
from .collector import Collector
from .records import DEFAULT_BYTES, DEFAULT_COUNT, Browse, browse

STATIC = Path(__file__).parent / "static"
COLLECTOR = web.AppKey("console_collector", Collector)
DEFAULT_PAGE = 50
MAX_PAGE = 500
# The page runs only its own files: nothing from another origin, no inline script.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _visible(request: web.Request, action: str):
    principal = request.get(PRINCIPAL)
    if principal is None:
        return lambda name: True
    actions = ("consume", "produce") if action == "topic" else ("groups",)
    return lambda name: any(principal.allows(a, name) for a in actions)


def _page(request: web.Request) -> tuple[str, int, int]:
    query = request.query.get("q", "")
    if len(query) > 249:
        raise InvalidRequest("q must be at most 249 characters", field="q")
    limit = query_int(request, "limit", DEFAULT_PAGE, minimum=1)
    if limit > MAX_PAGE:
        raise InvalidRequest(f"limit must be 1..{MAX_PAGE}, got {limit}", field="limit")
    return query, query_int(request, "offset", 0), limit


async def index(request: web.Request) -> web.Response:
    return web.FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)


async def to_index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/console/")


async def session(request: web.Request) -> web.Response:
    """Whether the page must ask for a token before it calls anything else."""
    return web.json_response({"auth": request.app[COLLECTOR].gateway.topology.auth is not None})


async def overview(request: web.Request) -> web.Response:
    snap = await request.app[COLLECTOR].snapshot()
    principal = request.get(PRINCIPAL)
    body = views.overview(snap, _visible(request, "topic"))
    body["principal"] = principal.name if principal else None
    return web.json_response(body)


async def brokers(request: web.Request) -> web.Response:
    return web.json_response(views.brokers(await request.app[COLLECTOR].snapshot()))


async def topics(request: web.Request) -> web.Response:
    query, offset, limit = _page(request)
    snap = await request.app[COLLECTOR].snapshot()
    return web.json_response(views.topics(snap, _visible(request, "topic"), query, offset, limit))


async def topic(request: web.Request) -> web.Response:
    name = check_name(request.match_info["topic"], "topic")
    _, offset, limit = _page(request)
    return web.json_response(views.topic(await request.app[COLLECTOR].snapshot(), name, offset, limit))


async def records(request: web.Request) -> web.Response:
    topic_name, partition = path_partition(request)
    want = Browse(
        mode=request.query.get("mode", "newest"),
        count=query_int(request, "count", DEFAULT_COUNT, minimum=1),
        offset=query_int(request, "offset", 0),
        timestamp=query_int(request, "timestamp", 0),
        max_bytes=query_int(request, "max_bytes", DEFAULT_BYTES, minimum=1),
    )
    caller = request.headers.get("Authorization")
    gateway = request.app[COLLECTOR].gateway
    body = await browse(gateway, topic_name, partition, want, {"Authorization": caller} if caller else None)
    return web.json_response(body)


async def groups(request: web.Request) -> web.Response:
    query, offset, limit = _page(request)
    collector = request.app[COLLECTOR]
    offsets, missing = await collector.group_offsets()
    snap = await collector.snapshot()
    found = views.page(views.matching(offsets, _visible(request, "group"), query), offset, limit)
    members = await collector.members(found["items"])
    found["items"] = [views.group_row(snap, g, offsets[g], members[g]) for g in found["items"]]
    found["missing_brokers"] = missing
    return web.json_response(found)


async def group(request: web.Request) -> web.Response:
    name = check_name(request.match_info["group"], "group")
    collector = request.app[COLLECTOR]
    offsets, missing = await collector.group_offsets()
    snap = await collector.snapshot()
    members = (await collector.members([name]))[name]
    body = views.group(snap, name, offsets.get(name, []), members)
    body["missing_brokers"] = missing
    return web.json_response(body)


def add_console_routes(app: web.Application, gateway) -> None:
    """Serve the console at ``/console/`` of ``app``, reading the cluster through ``gateway``."""
    app[COLLECTOR] = Collector(gateway)
    api = "/console/api"
    app.router.add_get("/console", to_index)
    app.router.add_get("/console/", index)
    app.router.add_static("/console/static", STATIC)
    app.router.add_get(api + "/session", session)
    app.router.add_get(api + "/overview", overview)
    app.router.add_get(api + "/brokers", brokers)
    app.router.add_get(api + "/topics", topics)
    app.router.add_get(api + "/topics/{topic}", topic)
    app.router.add_get(api + "/topics/{topic}/partitions/{partition}/records", records)
    app.router.add_get(api + "/groups", groups)
    app.router.add_get(api + "/groups/{group}", group)
