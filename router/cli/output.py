"""How the CLI prints: plain tables for people, stable JSON for scripts.

Every command builds a *view* (plain dicts and lists, snake_case keys) and hands it to
``emit`` with a function that renders the view as text. ``--output json`` prints the
view itself, so what a script reads and what a person reads come from one place, and
tests can compare both renderings of a built view with golden strings.

Tables follow rpk: UPPERCASE headers, columns separated by two spaces, left aligned,
``-`` for a missing value; a section title only when there is more than one section.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click
from rich.console import Console

_stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value) or "-"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows under UPPERCASE headers, two spaces between columns, no trailing spaces."""
    lines = [[h.upper() for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    out = []
    for line in lines:
        out.append("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip())
    return "\n".join(out) + "\n"


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """``KEY  value`` lines, keys upper-cased and aligned."""
    rows = [(key.upper(), cell(value)) for key, value in pairs]
    width = max((len(key) for key, _ in rows), default=0)
    return "".join(f"{key.ljust(width)}  {value}".rstrip() + "\n" for key, value in rows)


def sections(parts: Sequence[tuple[str, str]]) -> str:
    """Join rendered parts; titles only when there are several, a blank line between."""
    parts = [(title, body) for title, body in parts if body]
    if len(parts) == 1:
        return parts[0][1]
    return "\n".join(f"{title}\n{body}" for title, body in parts)


def to_json(view: Any) -> str:
    return json.dumps(view, indent=2, ensure_ascii=False) + "\n"


def emit(output: str, view: Any, render: Callable[[Any], str]) -> None:
    """Print ``view`` on stdout as JSON or as ``render(view)``."""
    click.echo(to_json(view) if output == "json" else render(view), nl=False)


def note(message: str) -> None:
    """A message for the person at the terminal (stderr; data goes to stdout)."""
    _stderr.print(message, markup=False)


def fail(message: str) -> None:
    """The one-line fatal error, in red on a terminal."""
    _stderr.print(message, style="red", markup=False)


class CliError(Exception):
    """A failure to report as ``unable to <action>: <message>`` (exit 1)."""
