"""In-place edits of cluster.yaml: comments and layout survive, and every edit is verified."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from shoal.router.cli.edit import add_topic_line, edited, remove_topic_line, set_epoch, write_atomically
from shoal.router.topology import TopicConfig, parse_topology

REPO_CLUSTER_YAML = (Path(__file__).resolve().parents[2] / "cluster.yaml").read_text()

COMMENTED = """\
# our cluster
cluster: c
epoch: 7   # bump me
brokers:
  - {id: 1, url: "http://h:1"}
topics:
    # the important one
    orders:
      partitions: 6   # six
      flush: always

    events: {}
settings: {}
"""


def test_set_epoch_keeps_the_comment():
    assert "epoch: 8   # bump me\n" in set_epoch(COMMENTED, 8)
    assert set_epoch("cluster: c\nbrokers: []\n", 2) == "cluster: c\nepoch: 2\nbrokers: []\n"
    assert set_epoch("brokers: []\n", 2) == "epoch: 2\nbrokers: []\n"


def test_add_topic_follows_the_block_indent():
    out = add_topic_line(COMMENTED, "pay-ments", {"partitions": 12, "retention_ms": None})
    assert out == COMMENTED.replace(
        "    events: {}\n", "    events: {}\n    pay-ments: {partitions: 12, retention_ms: null}\n"
    )


def test_add_topic_to_an_empty_or_missing_block():
    assert add_topic_line("brokers: []\ntopics: {}  # none\nsettings: {}\n", "t", {}) == (
        "brokers: []\ntopics:  # none\n  t: {}\nsettings: {}\n"
    )
    assert add_topic_line("brokers: []", "t", {"partitions": 1}) == "brokers: []\ntopics:\n  t: {partitions: 1}\n"


def test_flow_style_topics_are_not_edited_in_place():
    assert add_topic_line("topics: {a: {}}\n", "t", {}) is None


def test_remove_topic_with_its_continuation_lines():
    out = remove_topic_line(COMMENTED, "orders")
    assert out == COMMENTED.replace("    orders:\n      partitions: 6   # six\n      flush: always\n", "")
    assert remove_topic_line(COMMENTED, "events") == COMMENTED.replace("    events: {}\n", "")
    assert remove_topic_line(COMMENTED, "nope") is None
    assert remove_topic_line("topics:\n  'odd.name': {}\n  b: {}\n", "odd.name") == "topics:\n  b: {}\n"


def test_repository_file_round_trip_keeps_every_comment():
    current = parse_topology(REPO_CLUSTER_YAML, "cluster.yaml")
    topics = {**current.topics, "payments": dataclasses.replace(current.defaults, partitions=12)}
    expected = dataclasses.replace(current, epoch=2, topics=topics)
    text, kept = edited(set_epoch(add_topic_line(REPO_CLUSTER_YAML, "payments", {"partitions": 12}), 2), expected, "x")
    assert kept
    comments = [line for line in REPO_CLUSTER_YAML.splitlines() if "#" in line and "epoch" not in line]
    assert all(line in text.splitlines() for line in comments)


def test_unverifiable_edit_falls_back_to_a_rewrite():
    current = parse_topology(COMMENTED, "cluster.yaml")
    expected = dataclasses.replace(current, topics={"orders": TopicConfig(partitions=99)})
    text, kept = edited(COMMENTED, expected, "cluster.yaml")
    assert not kept
    assert parse_topology(text) == expected
    assert edited(None, expected, "cluster.yaml") == (text, False)


def test_write_atomically_keeps_the_mode(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("old")
    os.chmod(path, 0o640)
    write_atomically(str(path), "new")
    assert path.read_text() == "new"
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.yaml"]
