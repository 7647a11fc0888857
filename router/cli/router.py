"""``shoal router start``: the gateway, for clients that do not route themselves."""

from __future__ import annotations

import click

from shoal.router.cli.base import Options, action, global_options
from shoal.router.server.logs import FORMATS, LEVELS, configure_logging


@click.group()
@global_options
def router() -> None:
    """Run the gateway

    The gateway serves HTTP API v1 for every partition by forwarding each request to
    the partition's owner, spreads keyed JSON records over partitions
    (POST /v1/topics/TOPIC/records), shows groups across all brokers, and serves a
    read-only web console at /console/. It stores nothing: run as many as you like.
    """


@router.command("start")
@global_options
@click.option("--listen", metavar="HOST:PORT", default="127.0.0.1:9090", show_default=True, help="Where to bind.")
@click.option("--log-level", type=click.Choice(LEVELS), default="info", show_default=True)
@click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("--tls-cert", metavar="PEM", help="Serve HTTPS with this certificate chain (default: the tls: section).")
@click.option("--tls-key", metavar="PEM", help="The private key of --tls-cert.")
@click.option("--console/--no-console", default=True, show_default=True, help="Serve the read-only web console at /console/.")
@action("start gateway")
def start(
    opts: Options,
    listen: str,
    log_level: str,
    log_format: str,
    tls_cert: str | None,
    tls_key: str | None,
    console: bool,
) -> None:
    """Run the gateway in the foreground until SIGTERM or Ctrl-C

    EXAMPLES

      shoal router start

      shoal router start --listen 0.0.0.0:9090 --config /etc/shoal/cluster.yaml
    """
    from shoal.router.gateway.app import run_gateway

    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {listen!r}")
    topology = opts.load()
    configure_logging(log_level, log_format)
    if console:
        scheme = "https" if tls_cert or topology.tls else "http"
        shown = host if host not in ("", "0.0.0.0", "::", "[::]") else "127.0.0.1"
        click.echo(f"console: {scheme}://{shown}:{port}/console/ (read-only)")
    run_gateway(topology, host or "0.0.0.0", int(port), tls_cert=tls_cert, tls_key=tls_key, console=console)
