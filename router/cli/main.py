"""``shoal``: the admin CLI, ``shoal <noun> <verb> [ARGS]`` in the manner of rpk.

The nouns live in their own modules (``cli_cluster``, ``cli_topology``, ...); this one
assembles them and owns the exit: every failure is one line on stderr, never a
traceback (exit 1 for a failed command, 2 for a command line that does not parse).
"""

from __future__ import annotations

import errno
import os
import sys

import click

from shoal.router.cli.auth import auth
from shoal.router.cli.base import global_options
from shoal.router.cli.bench import bench
from shoal.router.cli.cluster import broker, cluster
from shoal.router.cli.group import group
from shoal.router.cli.output import fail
from shoal.router.cli.reassign import drain, rebalance_leaders
from shoal.router.cli.router import router
from shoal.router.cli.topic import topic
from shoal.router.cli.topology import topology


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@global_options
@click.version_option(package_name="shoal", prog_name="shoal")
def cli() -> None:
    """Run and administer a shoal cluster

    shoal is a Kafka-style partitioned commit log served by a cluster of Python brokers.
    Every command reads the broker URLs from cluster.yaml (--config), prints tables
    for people and --output json for scripts, and fails with one line on stderr and
    exit code 1.

    EXAMPLES

      shoal cluster up

      shoal cluster info

      shoal topic create payments -p 12
    """


for _command in (cluster, broker, router, topology, topic, group, bench, auth):
    cli.add_command(_command)
broker.add_command(drain)
cluster.add_command(rebalance_leaders)


def main(argv: list[str] | None = None) -> None:
    """The console script."""
    try:
        code = cli.main(args=argv, prog_name="shoal", standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "shoal"
        fail(f"{where}: {exc.format_message()} (see {where} --help)")
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        fail("interrupted")
        code = 130
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, and keep Python from
        # complaining when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
