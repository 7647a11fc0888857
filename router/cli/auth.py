"""``shoal auth new-token|hash-token``: make bearer tokens and the hashes cluster.yaml stores."""

from __future__ import annotations

import sys

import click

from shoal.router.server.auth import MIN_TOKEN_LENGTH, hash_token, new_token
from shoal.router.cli.base import Options, action, global_options
from shoal.router.cli.output import CliError, emit, key_values


@click.group()
@global_options
def auth() -> None:
    """Make tokens for the auth: section of cluster.yaml

    With an auth: section in cluster.yaml, brokers and the gateway want
    `Authorization: Bearer <token>` on every request but /v1/health, /metrics and
    /v1/openapi.json. cluster.yaml stores only each token's hash (token_hash:
    sha256:...), so the file can be shared without giving access away. Give the token
    itself to the principal; set SHOAL_TOKEN for the gateway's own calls.
    """


@auth.command("new-token")
@global_options
@action("make a token")
def new_token_command(opts: Options) -> None:
    """Print a new random token and the token_hash to put in cluster.yaml

    EXAMPLES

      shoal auth new-token

      shoal auth new-token -o json
    """
    token = new_token()
    emit(opts.output, {"token": token, "token_hash": hash_token(token)}, _render)


@auth.command("hash-token")
@global_options
@click.argument("token", required=False)
@action("hash the token")
def hash_token_command(opts: Options, token: str | None) -> None:
    """Print the token_hash of a token you already have (read from stdin without TOKEN)

    Reading the token from stdin keeps it out of the shell history and ps.

    EXAMPLES

      printf %s "$TOKEN" | shoal auth hash-token

      shoal auth hash-token -o json < token.txt
    """
    if token is None:
        token = sys.stdin.read().strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise CliError(
            f"a token must be at least {MIN_TOKEN_LENGTH} characters of random text; make one with `shoal auth new-token`"
        )
    emit(opts.output, {"token_hash": hash_token(token)}, _render)


def _render(view: dict) -> str:
    return key_values(view.items())
