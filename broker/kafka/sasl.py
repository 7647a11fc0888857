"""SASL/PLAIN authentication on the Kafka listener, and the permission checks every API makes.

With ``auth:`` in cluster.yaml a connection must authenticate before anything but
ApiVersions, SaslHandshake and SaslAuthenticate; any other request first closes it, as
Kafka does. The exchange is Kafka's (KIP-152): SaslHandshake v1 names the mechanism,
then one SaslAuthenticate carries the PLAIN message (RFC 4616); after a SaslHandshake
v0 the message comes as a bare size-prefixed frame and an empty one answers it::

    [authzid] NUL authcid NUL passwd

``authcid`` is the principal's name and ``passwd`` its token (``shoal auth new-token``);
an ``authzid``, if given, must be the same name. A wrong name or token answers
SASL_AUTHENTICATION_FAILED and closes the connection. The token is the one credential
shoal keeps (as its SHA-256), so SCRAM, which needs salted keys derived from the
password, is not offered.

Then every request is checked against the principal's permissions, as the HTTP API
checks them (``router.server.auth``): ``produce`` on a topic for Produce, ``consume``
for Fetch, ``consume`` or ``produce`` to describe one (Metadata, ListOffsets,
OffsetForLeaderEpoch), ``groups`` on a group for the group APIs and commits (with
``consume`` on each committed topic), ``admin`` for CreateTopics and DeleteTopics.
Refusals are Kafka's TOPIC_AUTHORIZATION_FAILED, GROUP_AUTHORIZATION_FAILED and
CLUSTER_AUTHORIZATION_FAILED; topics and groups a principal may not see are left out
of answers that list everything.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode

if TYPE_CHECKING:
    from shoal.broker.kafka.listener import Connection

log = logging.getLogger(__name__)

SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36
MECHANISMS = ("PLAIN",)
#: the APIs a connection may use before it has authenticated
OPEN_APIS = frozenset({18, SASL_HANDSHAKE, SASL_AUTHENTICATE})
DESCRIBE = ("consume", "produce")


def may(conn: Connection, name: str, *actions: str) -> bool:
    """May the connection's principal do one of ``actions`` on topic or group ``name``?
    Always, on a listener without ``auth:``."""
    if conn.broker.topology.auth is None:
        return True
    principal = conn.principal
    return principal is not None and any(principal.allows(action, name) for action in actions)


def is_admin(conn: Connection) -> bool:
    return conn.broker.topology.auth is None or (conn.principal is not None and conn.principal.admin)


def may_write_idempotently(conn: Connection) -> bool:
    """InitProducerId without a transactional id: any principal that may produce somewhere
    (Kafka asks for IdempotentWrite on the cluster or Write on some topic)."""
    principal = conn.principal
    return conn.broker.topology.auth is None or (principal is not None and (principal.admin or bool(principal.produce)))


async def handle_sasl_handshake(conn: Connection, request: Any, version: int) -> dict:
    if conn.broker.topology.auth is None:
        conn.close_after = True
        return {"error_code": ErrorCode.unsupported_sasl_mechanism, "mechanisms": []}
    if conn.principal is not None:
        code = ErrorCode.illegal_sasl_state  # authenticated already
    elif request.mechanism not in MECHANISMS:
        code = ErrorCode.unsupported_sasl_mechanism
    else:
        conn.mechanism = request.mechanism
        conn.raw_sasl = version == 0
        code = ErrorCode.none
    if code != ErrorCode.none:
        conn.close_after = True
    return {"error_code": code, "mechanisms": list(MECHANISMS)}


async def handle_sasl_authenticate(conn: Connection, request: Any, version: int) -> dict:
    failed = {"auth_bytes": b"", "session_lifetime": 0}
    auth = conn.broker.topology.auth
    if auth is None or conn.mechanism is None or conn.principal is not None:
        conn.close_after = True
        return {**failed, "error_code": ErrorCode.illegal_sasl_state, "error_message": "send SaslHandshake for PLAIN first"}
    if not authenticate(conn, bytes(request.auth_bytes)):
        return {**failed, "error_code": ErrorCode.sasl_authentication_failed,
                "error_message": "authentication failed: the username must be a principal and the password its token"}
    return {**failed, "error_code": 0, "error_message": None}


def authenticate(conn: Connection, message: bytes) -> bool:
    """Check a PLAIN message; on success the connection acts as its principal from now
    on, on failure it is closed once answered."""
    parts = message.split(b"\0")
    principal = None
    token = ""
    if len(parts) == 3:
        authzid, name, token = (p.decode("utf-8", "replace") for p in parts)
        principal = conn.broker.topology.auth.authenticate(token)
        if principal is not None and (principal.name != name or authzid not in ("", name)):
            principal = None
    if principal is None:
        conn.close_after = True
        log.warning("kafka %s: SASL/PLAIN authentication failed", conn.peer)
        return False
    conn.principal, conn.token = principal, token
    log.info("kafka %s: authenticated as principal %s", conn.peer, principal.name)
    return True


APIS = {
    SASL_HANDSHAKE: (0, 1, handle_sasl_handshake),
    SASL_AUTHENTICATE: (0, 2, handle_sasl_authenticate),
}
