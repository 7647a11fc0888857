"""The gateway's read-only web console at ``/console/`` (see docs/console.md).

Plain HTML, CSS and JavaScript shipped in ``static/`` (no CDN, no build step), reading
JSON views that the gateway aggregates from every broker with bounded concurrency and
a short cache (``collector``).
"""

from .handlers import add_console_routes

__all__ = ["add_console_routes"]
