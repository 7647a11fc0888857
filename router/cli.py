"""``shoal``: the admin CLI, ``shoal <noun> <verb> [ARGS]`` in the manner of rpk.

The nouns live in their own modules (``cli_cluster``, ``cli_topology``, ...); this one
only assembles them. See docs/cli.md for every command.
"""

from __future__ import annotations

import click

from .cli_base import global_options
from .cli_bench import bench
from .cli_cluster import broker, cluster
from .cli_topology import topology


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


for _command in (cluster, broker, topology, bench):
    cli.add_command(_command)


def main() -> None:
    """The console script."""
    cli(prog_name="shoal")


if __name__ == "__main__":
    main()
