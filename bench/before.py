"""The client's per-record paths of an earlier revision, timed by this revision's harness.

``bench/run.sh --client-paths-before REV`` puts a before/after table in the report from
one run: the tree of ``REV`` (``git archive``) gets this checkout's ``bench/`` and a
venv of its own, both cached under ``~/.cache/shoal/bench-before/<commit>``, and runs
``python -m bench.client_paths --json`` there, right after this revision's own paths,
on the same machine and with the same sizes.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "shoal" / "bench-before"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def prepare(revision: str) -> Path:
    """The tree of ``revision`` with a venv holding it, made once per commit."""
    commit = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    tree = CACHE / commit
    python = tree / ".venv" / "bin" / "python"
    if not (tree / ".ready").exists():
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        with tempfile.TemporaryFile() as archive:
            subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, stdout=archive)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(tree, filter="data")
        log.info("installing %s (%s) into %s", revision, commit[:12], tree)
        subprocess.run([sys.executable, "-m", "venv", str(tree / ".venv")], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", str(tree)], check=True)
        (tree / ".ready").write_text(commit + "\n")
    shutil.rmtree(tree / "bench", ignore_errors=True)
    shutil.copytree(ROOT / "bench", tree / "bench", ignore=shutil.ignore_patterns("results", "__pycache__"))
    return tree


def measure(revision: str, records: int, runs: int) -> dict:
    """``bench.client_paths.measure`` of ``revision``'s client, plus which commit it was."""
    tree = prepare(revision)
    out = tree / "client_paths.json"
    out.unlink(missing_ok=True)
    subprocess.run(
        [str(tree / ".venv" / "bin" / "python"), "-m", "bench.client_paths", "--records", str(records),
         "--runs", str(runs), "--json", str(out)],
        cwd=tree, check=True,
    )  # fmt: skip
    return {"revision": revision, "commit": (tree / ".ready").read_text().strip(), **json.loads(out.read_text())}
