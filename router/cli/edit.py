"""Small edits to cluster.yaml that keep it as the person wrote it.

``shoal topic create|delete`` change one topic line and the epoch, leaving comments,
order and layout alone. Every edit is checked by parsing the result and comparing it
with the topology it must describe; when the layout is one these line edits do not
understand (a flow-style ``topics: {...}``, say), the file is rewritten from the
topology instead (``Topology.to_yaml``), which loses comments, and the caller is told.
Files are replaced atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

import yaml

from shoal.router.topology import Topology, parse_topology

_EPOCH = re.compile(r"^epoch:[ \t]*[^#\n]*?([ \t]*#.*)?$", re.M)
_CLUSTER = re.compile(r"^cluster:.*$", re.M)
_TOPICS = re.compile(r"^topics:[ \t]*(?P<value>[^#\n]*?)[ \t]*(?P<comment>#.*)?$", re.M)
_EMPTY_VALUES = ("", "{}", "null", "~")


def _flow(data: Any) -> str:
    return yaml.safe_dump(data, default_flow_style=True, sort_keys=False, width=1 << 20).removesuffix("\n...\n").strip()


def set_epoch(text: str, epoch: int) -> str:
    """``text`` with its top-level ``epoch:`` set (added after ``cluster:`` if missing)."""
    if _EPOCH.search(text):
        return _EPOCH.sub(lambda m: f"epoch: {epoch}{m.group(1) or ''}", text, count=1)
    cluster = _CLUSTER.search(text)
    at = cluster.end() + 1 if cluster else 0
    return text[:at] + f"epoch: {epoch}\n" + text[at:]


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _topics_block(lines: list[str]) -> tuple[int, int, str] | None:
    """(index of the ``topics:`` line, index after its block, entry indent), or None."""
    for i, line in enumerate(lines):
        match = _TOPICS.match(line.rstrip("\n"))
        if not match:
            continue
        end, indent = i + 1, ""
        for j in range(i + 1, len(lines)):
            stripped = lines[j].strip()
            if not stripped or stripped.startswith("#"):
                continue
            if not lines[j][0].isspace():
                break
            indent = indent or lines[j][: len(lines[j]) - len(lines[j].lstrip())]
            end = j + 1
        return i, end, indent or "  "
    return None


def add_topic_line(text: str, name: str, overrides: dict[str, Any]) -> str | None:
    """``text`` with ``name: {overrides}`` added under ``topics:``; None if the layout is not a block."""
    line = f"{_flow(name)}: {_flow(overrides)}\n"
    if text and not text.endswith("\n"):
        text += "\n"
    lines = _lines(text)
    block = _topics_block(lines)
    if block is None:
        return text + "topics:\n  " + line
    start, end, indent = block
    match = _TOPICS.match(lines[start].rstrip("\n"))
    if match.group("value") not in _EMPTY_VALUES:
        return None  # flow style: topics: {a: {...}}
    if end == start + 1 and match.group("value"):
        comment = f"  {match.group('comment')}" if match.group("comment") else ""
        lines[start] = f"topics:{comment}\n"
    lines.insert(end, indent + line)
    return "".join(lines)


def remove_topic_line(text: str, name: str) -> str | None:
    """``text`` without topic ``name``'s entry (and its continuation lines); None if not found."""
    lines = _lines(text)
    block = _topics_block(lines)
    if block is None:
        return None
    start, end, indent = block
    keys = {f"{name}:", f"'{name}':", f'"{name}":'}
    for i in range(start + 1, end):
        line = lines[i]
        if line.startswith(indent) and not line[len(indent)].isspace() and any(
            line[len(indent):].startswith(key) for key in keys
        ):
            stop = i + 1
            while stop < end and (not lines[stop].strip() or lines[stop].startswith(indent + " ")):
                stop += 1
            while stop > i + 1 and not lines[stop - 1].strip():
                stop -= 1  # keep the blank lines that separate what follows
            del lines[i:stop]
            return "".join(lines)
    return None


def edited(text: str | None, expected: Topology, source: str) -> tuple[str, bool]:
    """``text`` if it parses to ``expected``, else ``expected.to_yaml()``; and whether
    the edit kept the file's own text."""
    if text is not None:
        try:
            if parse_topology(text, source) == expected:
                return text, True
        except ValueError:
            pass
    return expected.to_yaml(), False


def write_atomically(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` so a reader sees the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".cluster-", suffix=".yaml", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        except FileNotFoundError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
