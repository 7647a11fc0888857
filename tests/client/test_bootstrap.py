"""Bootstrap parsing: URLs, lists, cluster.yaml paths, and clear errors for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.client.cluster import ClusterMetadata, parse_bootstrap

REPO_CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_one_url():
    assert parse_bootstrap("http://127.0.0.1:9091/") == ["http://127.0.0.1:9091"]


def test_comma_separated_and_host_port():
    assert parse_bootstrap("127.0.0.1:9091, https://b.example:443") == [
        "http://127.0.0.1:9091",
        "https://b.example:443",
    ]


def test_list_is_deduplicated_in_order():
    assert parse_bootstrap(["http://b:2", "http://a:1", "http://b:2/"]) == ["http://b:2", "http://a:1"]


def test_cluster_yaml_reads_only_broker_urls(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "cluster: x\nepoch: 3\nbrokers:\n  - {id: 2, url: 'http://10.0.0.2:9000'}\n"
        "  - {id: 1, url: 'http://10.0.0.1:9000', data_dir: /d}\ntopics: {whatever: [not, checked]}\n"
    )
    assert parse_bootstrap(str(path)) == ["http://10.0.0.2:9000", "http://10.0.0.1:9000"]
    assert parse_bootstrap(path) == parse_bootstrap(str(path))


def test_the_repository_cluster_yaml():
    assert parse_bootstrap(REPO_CLUSTER_YAML) == [f"http://127.0.0.1:909{i}" for i in (1, 2, 3)]


def test_a_yaml_file_without_the_suffix(tmp_path):
    path = tmp_path / "topology"
    path.write_text("brokers: [{id: 1, url: 'http://h:1'}]\n")
    assert parse_bootstrap(str(path)) == ["http://h:1"]


@pytest.mark.parametrize(
    ("bootstrap", "message"),
    [
        ("", "bootstrap is empty"),
        ([], "bootstrap is empty"),
        ("ftp://h:1", "not a broker URL"),
        ("http://h:notaport", "not a broker URL"),
        ([1234], "must be strings"),
        (42, "bootstrap must be"),
        ("missing.yaml", "cannot read bootstrap file missing.yaml"),
    ],
)
def test_bad_bootstrap(bootstrap, message):
    with pytest.raises(ValueError, match=message):
        parse_bootstrap(bootstrap)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("brokers: [\n", "not valid YAML"),
        ("cluster: x\n", "brokers must be a non-empty list"),
        ("brokers: []\n", "brokers must be a non-empty list"),
        ("brokers: [{id: 1}]\n", r"brokers\[0\].url is missing"),
        ("brokers: [{id: 1, url: 'http://a:1'}, {id: 2, url: 'gopher://b'}]\n", r"brokers\[1\].url"),
    ],
)
def test_bad_cluster_yaml_names_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        parse_bootstrap(str(path))
    assert str(path) in str(info.value)


def test_cluster_metadata_from_an_answer():
    meta = ClusterMetadata.from_json(
        {
            "cluster": "c", "epoch": 7,
            "brokers": [{"id": 1, "url": "http://a:1"}, {"id": 2, "url": "http://b:2/"}],
            "topics": {"t": {"partitions": 3, "flush": "always"}},
            "owners": {"t": [2, 1, 2]},
            "settings": {"max_batch_bytes": 4096},
        }
    )
    assert meta.epoch == 7 and meta.partitions == {"t": 3} and meta.max_batch_bytes == 4096
    assert [meta.owner_url("t", p) for p in range(3)] == ["http://b:2", "http://a:1", "http://b:2"]
    assert meta.owner_url("t", 3) is None and meta.owner_url("nope", 0) is None


def test_malformed_cluster_answer():
    with pytest.raises(ValueError, match="malformed GET /v1/cluster"):
        ClusterMetadata.from_json({"epoch": 1, "brokers": "nope"})
