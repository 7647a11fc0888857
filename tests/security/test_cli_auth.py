"""``shoal auth new-token|hash-token``: the hash they print is what cluster.yaml accepts and brokers match."""

from __future__ import annotations

import json

from click.testing import CliRunner

from shoal.router.cli.main import cli
from shoal.router.topology import parse_topology


def run(*args: str, stdin: str | None = None):
    return CliRunner().invoke(cli, list(args), input=stdin)


def test_new_token_hash_authenticates_the_token():
    result = run("auth", "new-token", "-o", "json")
    assert result.exit_code == 0, result.output
    made = json.loads(result.output)
    text = (
        "brokers: [{id: 1, url: 'http://127.0.0.1:9091'}]\n"
        f"auth: {{principals: {{app: {{token_hash: '{made['token_hash']}', produce: ['*']}}}}}}\n"
    )
    topo = parse_topology(text)
    assert topo.auth.authenticate(made["token"]).name == "app"


def test_hash_token_reads_stdin_and_matches_the_argument_form():
    token = "a-long-enough-token-value"
    from_stdin = run("auth", "hash-token", "-o", "json", stdin=token + "\n")
    from_arg = run("auth", "hash-token", token)
    assert from_stdin.exit_code == 0 and from_arg.exit_code == 0
    digest = json.loads(from_stdin.output)["token_hash"]
    assert from_arg.output == f"TOKEN_HASH  {digest}\n"


def test_a_short_token_is_refused_in_one_line():
    result = run("auth", "hash-token", "password")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "unable to hash the token: a token must be at least 16 characters of random text; "
        "make one with `shoal auth new-token`"
    ]
