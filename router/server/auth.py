"""Optional bearer-token authentication and per-principal permissions.

Configured in the ``auth:`` section of cluster.yaml (validated by ``router.topology``)::

    auth:
      principals:
        ops:     {token_hash: "sha256:<64 hex digits>", admin: true}
        brokers: {token_hash: "sha256:<64 hex digits>", replication: true}
        billing:
          token_hash: "sha256:<64 hex digits>"
          produce: [orders, "payments.*"]   # topic name patterns (fnmatch: * and ?)
          consume: [orders]
          groups: ["billing-*"]             # consumer group name patterns

A request carries ``Authorization: Bearer <token>``. Only the SHA-256 of each token is
stored: tokens are 256-bit random secrets made by ``shoal auth new-token``, so a
fast hash is as safe to keep as a slow one would be for a password, and a request is
authenticated with one hash and one dict lookup (no per-request key stretching that
an unauthenticated caller could use to burn the broker's CPU).

What each route needs is a table here keyed by the route's path template; a route
missing from it needs ``admin``, so a new endpoint is closed until someone opens it.
``/v1/health``, ``/metrics`` and ``/v1/openapi.json`` stay open (probes and scrapers
carry no token), and so do the console's static files (a browser loads them before it
is given a token); ``GET /v1/cluster`` needs any valid token. The replica endpoints
(``/v1/replica/...``, followers copying a leader) need ``replication`` (Kafka's
ClusterAction): each broker presents its own token, from ``$SHOAL_BROKER_TOKEN``.
``admin`` may do anything.
The principal of an authenticated request is ``request[PRINCIPAL]``.

Pure data and checks, plus one aiohttp middleware; no IO.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from dataclasses import dataclass
from fnmatch import fnmatchcase

from aiohttp import web

from shoal.client.errors import Forbidden, Unauthorized

from shoal.router.server.middlewares import PROBES, route_key

log = logging.getLogger(__name__)

ACTIONS = ("produce", "consume", "groups")
HASH_PREFIX = "sha256:"
MIN_TOKEN_LENGTH = 16
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
_PATTERN = re.compile(r"^[A-Za-z0-9._*?-]{1,249}$")


BROKER_TOKEN_ENV = "SHOAL_BROKER_TOKEN"


def broker_token(auth: AuthConfig | None, replicated: bool, source: str) -> str | None:
    """The token a broker presents to its peers' replica endpoints: ``$SHOAL_BROKER_TOKEN``.

    None without ``auth:`` or replication. Checked at start-up against the broker's own
    ``auth:`` section, so a missing or wrong token stops the broker with one line
    instead of leaving its followers refused (401/403) forever.

    Raises:
        TopologyError: auth and replication are on and the token is missing, unknown, or
            its principal has neither ``replication`` nor ``admin``.
    """
    from shoal.router.topology import TopologyError

    if auth is None or not replicated:
        return None
    token = os.environ.get(BROKER_TOKEN_ENV) or None
    need = f"a replicated cluster with auth: needs ${BROKER_TOKEN_ENV}, the token of a principal with replication: true"
    if token is None:
        raise TopologyError([f"{source}: {need}; it is not set"])
    principal = auth.authenticate(token)
    if principal is None:
        raise TopologyError([f"{source}: ${BROKER_TOKEN_ENV} is not the token of any principal of auth: ({need})"])
    if not (principal.replication or principal.admin):
        raise TopologyError([f"{source}: ${BROKER_TOKEN_ENV} is principal {principal.name}'s, which lacks replication: true"])
    return token


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The ``token_hash`` to put in cluster.yaml for ``token``."""
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def token_hash_problem(value: object) -> str | None:
    """What is wrong with a ``token_hash`` value, or None."""
    if isinstance(value, str) and _HASH.match(value):
        return None
    return "must be sha256:<64 lowercase hex digits>, the hash of a token (make one with `shoal auth new-token`)"


def pattern_problem(value: object) -> str | None:
    """What is wrong with a name pattern, or None."""
    if isinstance(value, str) and _PATTERN.match(value):
        return None
    return f"must be a name pattern of A-Z a-z 0-9 . _ - and the wildcards * ?, got {value!r}"


@dataclass(frozen=True)
class Principal:
    """Who a token belongs to and what it may do.

    Attributes:
        name: shown in logs and in FORBIDDEN answers.
        token_hash: ``sha256:<hex>`` of the token.
        admin: may do everything, including ``PUT /v1/cluster`` and deleting groups.
        produce: topic patterns this principal may append to.
        consume: topic patterns it may read (records, offsets).
        groups: consumer group patterns it may commit, read and join as.
        replication: may fetch from partition leaders as a follower (brokers' own principal).
    """

    name: str
    token_hash: str
    admin: bool = False
    produce: tuple[str, ...] = ()
    consume: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    replication: bool = False

    def allows(self, action: str, name: str) -> bool:
        """May this principal do ``action`` (one of ACTIONS) on topic or group ``name``?"""
        return self.admin or any(fnmatchcase(name, p) for p in getattr(self, action))

    def to_dict(self) -> dict:
        out: dict = {"token_hash": self.token_hash}
        if self.admin:
            out["admin"] = True
        if self.replication:
            out["replication"] = True
        for action in ACTIONS:
            if getattr(self, action):
                out[action] = list(getattr(self, action))
        return out


PRINCIPAL = web.RequestKey("principal", Principal)


@dataclass(frozen=True)
class AuthConfig:
    """The ``auth:`` section: the principals, by name. Immutable.

    ``kafka_sasl_plaintext``: let the Kafka listener take SASL/PLAIN passwords (the
    tokens) over plain TCP when the broker has no ``tls:``; off, such a broker refuses
    to start its listener.
    """

    principals: tuple[Principal, ...]
    kafka_sasl_plaintext: bool = False

    def __post_init__(self) -> None:
        by_digest = {bytes.fromhex(p.token_hash.removeprefix(HASH_PREFIX)): p for p in self.principals}
        object.__setattr__(self, "_by_digest", by_digest)

    def authenticate(self, token: str) -> Principal | None:
        """The principal whose token this is, or None."""
        return self._by_digest.get(hashlib.sha256(token.encode()).digest())

    def to_dict(self) -> dict:
        out: dict = {"principals": {p.name: p.to_dict() for p in self.principals}}
        if self.kafka_sasl_plaintext:
            out["kafka_sasl_plaintext"] = True
        return out


# What a route needs: for each path parameter named, one of the actions on its value.
# An empty tuple: any valid token. Routes of the broker and of the gateway alike.
Need = tuple[tuple[tuple[str, ...], str], ...]
_PART = "/v1/topics/{topic}/partitions/{partition}"
_COMMITTED = "/v1/groups/{group}/topics/{topic}/partitions/{partition}/offset"
_GROUP = (("groups",), "group")
_CONSOLE = "/console/api"
# Followers copying a leader: brokers only (see Principal.replication).
_REPLICATION = frozenset({("POST", "/v1/replica/fetch"), ("POST", "/v1/replica/epoch-end"), ("GET", "/v1/replica/stream")})
# The console's page and files: no data in them, so no token.
_OPEN = frozenset({
    ("GET", "/console"), ("GET", "/console/"), ("GET", "/console/static"), ("GET", _CONSOLE + "/session"),
})
_RULES: dict[tuple[str, str], Need] = {
    ("GET", "/v1/cluster"): (),
    ("POST", _PART + "/records"): ((("produce",), "topic"),),
    ("POST", "/v1/topics/{topic}/records"): ((("produce",), "topic"),),
    ("GET", _PART + "/records"): ((("consume",), "topic"),),
    ("GET", _PART + "/offsets"): ((("consume", "produce"), "topic"),),
    ("GET", _COMMITTED): (_GROUP, (("consume",), "topic")),
    ("PUT", _COMMITTED): (_GROUP, (("consume",), "topic")),
    ("GET", "/v1/groups/{group}"): (_GROUP,),
    ("POST", "/v1/groups/{group}/members"): (_GROUP,),
    ("GET", "/v1/groups/{group}/members"): (_GROUP,),
    ("POST", "/v1/groups/{group}/members/{member}/heartbeat"): (_GROUP,),
    ("DELETE", "/v1/groups/{group}/members/{member}"): (_GROUP,),
    ("POST", "/v1/groups/{group}/fence"): (_GROUP,),
    ("POST", "/v1/groups/{group}/offsets"): (_GROUP,),
    ("GET", "/v1/groups/{group}/offsets"): (_GROUP,),
    # The console lists only what the principal may see (shoal.router.console).
    ("GET", _CONSOLE + "/overview"): (),
    ("GET", _CONSOLE + "/brokers"): (),
    ("GET", _CONSOLE + "/topics"): (),
    ("GET", _CONSOLE + "/groups"): (),
    ("GET", _CONSOLE + "/topics/{topic}"): ((("consume", "produce"), "topic"),),
    ("GET", _CONSOLE + "/topics/{topic}/partitions/{partition}/records"): ((("consume",), "topic"),),
    ("GET", _CONSOLE + "/groups/{group}"): (_GROUP,),
}


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization")
    if not header:
        raise Unauthorized("this server needs a bearer token: send Authorization: Bearer <token>")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return token


def check(config: AuthConfig, request: web.Request) -> Principal | None:
    """The caller's principal, after checking it may make this request.

    Returns None for an open route. Raises Unauthorized (no or unknown token) or
    Forbidden (a known principal without the permission).
    """
    method, template = route_key(request)
    if (method, template) in PROBES or (method, template) in _OPEN:
        return None
    principal = config.authenticate(_bearer(request))
    if principal is None:
        raise Unauthorized("the bearer token is not one this cluster knows")
    if template is None:  # no such route: let the router's 404/405 answer
        return principal
    if (method, template) in _REPLICATION:
        _require(principal, principal.admin or principal.replication, "replication", f"{method} {template}")
        return principal
    needs = _RULES.get((method, template))
    if needs is None:
        _require(principal, principal.admin, "admin", f"{method} {template}")
        return principal
    for actions, param in needs:
        name = request.match_info[param]
        allowed = any(principal.allows(action, name) for action in actions)
        _require(principal, allowed, "|".join(actions), f"{param} {name}")
    return principal


def _require(principal: Principal, allowed: bool, permission: str, what: str) -> None:
    if not allowed:
        raise Forbidden(
            f"principal {principal.name} lacks the {permission} permission for {what}",
            principal=principal.name, permission=permission,
        )


def authenticate(config: AuthConfig):
    """The middleware that enforces ``config``; put it after ``problem_errors``."""

    @web.middleware
    async def auth(request: web.Request, handler):
        principal = check(config, request)
        if principal is not None:
            request[PRINCIPAL] = principal
            log.debug("%s %s by principal %s", request.method, request.path, principal.name)
        return await handler(request)

    return auth

