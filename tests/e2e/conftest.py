"""Fixtures of the docker end-to-end tests: an engine, the images, one compose cluster for the run.

Without a Docker engine (or the compose tool, or the docker SDK) these tests skip with
the reason; with SHOAL_REQUIRE_DOCKER=1 (CI) that skip is a failure instead.

The images are tagged with a hash of everything they are built from, so a run whose
sources did not change since the last build starts no build at all, and test runs of
different work trees on one engine never use each other's images. The compose cluster is
brought up once and shared: each test keeps to topics of its own, and ``cluster`` hands
it over healed (every container running, every partition fully in sync) whatever the
test before it did.
"""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import warnings
from datetime import datetime, timedelta, timezone

import pytest

from tests.e2e.compose import DEPLOY, REPO, ComposeCluster, compose_command
from tests.harness import env_flag

BUILD_TIMEOUT_S = 900  # a cold build makes the Debian base once; warm builds take seconds
# What the images are made of: what deploy/build-image.sh copies (but README.md, which is
# only the wheel's long description, so a docs change does not rebuild) and its own files.
IMAGE_INPUTS = ("pyproject.toml", "broker", "client", "router",
                "deploy/build-image.sh", "deploy/Dockerfile", "deploy/Dockerfile.etcd", "deploy/healthcheck.py")
STALE_IMAGE_AGE = timedelta(days=1)  # hash-tagged images of older sources, unused this long, are removed

# Topics of the shared cluster, one set per test (name -> partitions).
TOPICS = {
    "orders": 12,      # test_produce_and_consume_across_all_brokers
    "kafka": 3,        # test_kafka_clients_through_the_advertised_listeners
    "restarts": 3,     # test_topic_created_on_the_host_outlives_a_container_restart
    "billing": 6,      # test_consumer_container_resumes_from_committed_offsets
    "failover": 1,     # tests/e2e/test_failover.py
}


def _unavailable(reason: str):
    if env_flag("SHOAL_REQUIRE_DOCKER"):
        pytest.fail(f"{reason} (SHOAL_REQUIRE_DOCKER=1 makes this a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client():
    try:
        import docker
    except ImportError:
        _unavailable("the docker SDK is not installed (pip install -e '.[dev]')")
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        failure = f"no Docker engine answers: {exc}"
    else:
        failure = None
    if failure:
        with warnings.catch_warnings():  # the SDK leaves its failed connection to the collector
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        _unavailable(failure)
    yield client
    client.close()


@pytest.fixture(scope="session")
def compose(docker_client) -> list[str]:
    cmd = compose_command()
    if cmd is None:
        _unavailable("neither 'docker compose' nor 'docker-compose' is installed")
    return cmd


def inputs_hash() -> str:
    """A hash of the files the images are built from (names, modes and contents)."""
    digest = hashlib.sha256()
    for name in IMAGE_INPUTS:
        top = REPO / name
        files = sorted(top.rglob("*")) if top.is_dir() else [top] if top.exists() else []
        for path in files:
            relative = path.relative_to(REPO)
            if not path.is_file() or "__pycache__" in relative.parts or path.suffix == ".pyc":
                continue
            digest.update(f"{relative}\0{path.stat().st_mode & 0o111:o}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def remove_stale_images(client, keep: set[str]) -> None:
    """Hash-tagged test images of other sources, created over a day ago, that no container uses."""
    from docker.errors import APIError

    for repo in ("shoal", "shoal-etcd"):
        for image in client.images.list(name=repo):
            tags = [t for t in image.tags if t.partition(":")[2].startswith("e2e-")]
            created = datetime.fromisoformat(image.attrs["Created"][:19]).replace(tzinfo=timezone.utc)
            if not tags or keep & set(image.tags) or datetime.now(timezone.utc) - created < STALE_IMAGE_AGE:
                continue
            for tag in tags:
                try:
                    client.images.remove(tag)
                except APIError:
                    pass  # a container still uses it


@pytest.fixture(scope="session")
def images(docker_client) -> tuple[str, str]:
    """The shoal and etcd images of this work tree, built by deploy/build-image.sh (the users' way)
    unless images of exactly these sources are in the engine already."""
    if "SHOAL_IMAGE" in os.environ:  # names of the user's choosing: the script decides what to rebuild
        wanted = (os.environ["SHOAL_IMAGE"], os.environ.get("SHOAL_ETCD_IMAGE", "shoal-etcd:latest"))
    else:
        tag = f"e2e-{inputs_hash()}"
        wanted = (f"shoal:{tag}", f"shoal-etcd:{tag}")
        remove_stale_images(docker_client, set(wanted))
        if all(docker_client.images.list(name=name) for name in wanted):
            print(f"{wanted[0]} and {wanted[1]} exist: nothing to build")
            return wanted
    proc = subprocess.run(
        [str(DEPLOY / "build-image.sh"), *wanted], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    if proc.returncode != 0:
        pytest.fail(f"deploy/build-image.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False)
    print(proc.stderr)
    return wanted


@pytest.fixture(scope="session")
def shared_cluster(compose, docker_client, images, tmp_path_factory):
    """One compose cluster (etcd, three brokers, the gateway) for the whole run, removed at the end."""
    cluster = ComposeCluster(compose, docker_client, images, tmp_path_factory.mktemp("compose"), TOPICS)
    try:
        cluster.up()
        yield cluster
    finally:
        try:
            print(cluster.logs())
        finally:
            cluster.down()


@pytest.fixture
def cluster(shared_cluster) -> ComposeCluster:
    """The shared cluster, healed: every container running and every partition fully in sync."""
    shared_cluster.heal()
    return shared_cluster
