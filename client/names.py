"""Validation of topic and group names, shared by the broker, the router and the client.

A name is 1-249 characters of ``[A-Za-z0-9._-]`` and neither ``.`` nor ``..``, so it is
always safe as a directory name under a broker's data dir.
"""

from __future__ import annotations

import re

from .errors import InvalidRequest

MAX_NAME_LENGTH = 249
_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and name not in (".", "..") and _NAME.fullmatch(name) is not None


def check_name(name: object, field: str = "topic") -> str:
    """Return ``name`` if valid, else raise ``InvalidRequest`` naming ``field``."""
    if not is_valid_name(name):
        shown = repr(name)[:60]
        raise InvalidRequest(
            f"{field} name {shown} is invalid: use 1-{MAX_NAME_LENGTH} characters of "
            "A-Z a-z 0-9 . _ - (not '.' or '..')",
            field=field,
        )
    return name  # type: ignore[return-value]
