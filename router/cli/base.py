"""What every ``shoal`` command shares: the global flags and the one way to fail.

The global flags (``--config``, ``--output``, ``-v``) are accepted both before the noun
(``shoal --output json topic list``) and after the verb (``shoal topic list -o json``),
as rpk does. Every command body runs under ``action("<verb> <thing>")``, which turns any
expected failure into one line on stderr, ``unable to <verb> <thing>: <why>``, and exit 1.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import click

from shoal.client.errors import ShoalError

from shoal.router.cli.output import CliError, fail
from shoal.router.server.logs import configure_logging
from shoal.router.topology import Topology, TopologyError, load_topology

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "cluster.yaml"


@dataclass
class Options:
    """The global flags, wherever on the command line they were given."""

    config: str = DEFAULT_CONFIG
    output: str = "text"
    verbose: int = 0

    def load(self) -> Topology:
        """The topology in ``--config``, validated (TopologyError otherwise)."""
        return load_topology(self.config)


def _setter(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        opts = ctx.find_root().ensure_object(Options)
        if name == "verbose":
            opts.verbose += value or 0
        elif value is not None:
            setattr(opts, name, value)

    return store


def global_options(f: Callable) -> Callable:
    """Add ``--config``, ``--output`` and ``-v`` to a group or command."""
    f = click.option(
        "-v", "--verbose", count=True, expose_value=False, callback=_setter("verbose"),
        help="Log what happens on stderr; -vv for debug detail.",
    )(f)
    f = click.option(
        "-o", "--output", type=click.Choice(["text", "json"]), expose_value=False, callback=_setter("output"),
        help="text: tables for people (the default); json: stable objects for scripts.",
    )(f)
    return click.option(
        "--config", metavar="PATH", envvar="SHOAL_CONFIG", expose_value=False, callback=_setter("config"),
        help=f"The cluster topology (default ./{DEFAULT_CONFIG}, or $SHOAL_CONFIG).",
    )(f)


def explain(exc: BaseException) -> str:
    """The message of an expected failure, without a traceback."""
    if isinstance(exc, TopologyError):
        if len(exc.problems) == 1:
            return exc.problems[0]
        return f"{len(exc.problems)} problems:\n  " + "\n  ".join(exc.problems)
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, aiohttp.ClientError):
        return f"HTTP error: {exc}"
    return str(exc) or type(exc).__name__


class Failed(click.ClickException):
    """Printed as the one ``unable to ...`` line (in red on a terminal); exit 1."""

    def show(self, file: Any = None) -> None:
        fail(self.message)


def action(what: str) -> Callable[[Callable], Callable]:
    """Run a command body as ``what`` ("create topic"): configure logging from ``-v``,
    pass the global ``Options`` first, and report failures as ``unable to <what>: ...``."""

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def run(*args: Any, **kwargs: Any) -> Any:
            opts = click.get_current_context().find_root().ensure_object(Options)
            level = {0: "warning", 1: "info"}.get(opts.verbose, "debug")
            configure_logging(level)
            try:
                return f(opts, *args, **kwargs)
            except BrokenPipeError:
                raise  # the reader went away: main() exits quietly
            except (CliError, ShoalError, TopologyError, OSError, aiohttp.ClientError, ValueError) as exc:
                log.debug("unable to %s", what, exc_info=True)
                raise Failed(f"unable to {what}: {explain(exc)}") from None

        return run

    return decorate


def earliest_latest_or_offset(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | int | None:
    """Click callback for options that take ``earliest``, ``latest`` or an offset."""
    if value is None or value in ("earliest", "latest"):
        return value
    try:
        offset = int(value)
    except ValueError:
        raise click.BadParameter("use earliest, latest or an offset") from None
    if offset < 0:
        raise click.BadParameter("an offset is >= 0")
    return offset
