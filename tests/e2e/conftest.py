"""Fixtures of the docker end-to-end tests: an engine, the image, a compose cluster per test.

Without a Docker engine (or the compose tool, or the docker SDK) these tests skip with
the reason; with SHOAL_REQUIRE_DOCKER=1 (CI) that skip is a failure instead.
"""

from __future__ import annotations

import gc
import os
import subprocess
import warnings

import pytest

from tests.e2e.compose import DEPLOY, ComposeCluster, compose_command
from tests.harness import env_flag

IMAGE = os.environ.get("SHOAL_IMAGE", "shoal:latest")
BUILD_TIMEOUT_S = 900  # a cold build makes the Debian base once; warm builds take seconds


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


@pytest.fixture(scope="session")
def shoal_image(docker_client) -> str:
    """The image built from this work tree by deploy/build-image.sh (the users' way)."""
    proc = subprocess.run(
        [str(DEPLOY / "build-image.sh"), IMAGE], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    if proc.returncode != 0:
        pytest.fail(f"deploy/build-image.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False)
    print(proc.stderr)
    return IMAGE


@pytest.fixture
def make_cluster(compose, docker_client, shoal_image, tmp_path):
    """``make_cluster(topics={"orders": 12}) -> ComposeCluster``, up and serving; removed at the end."""
    clusters: list[ComposeCluster] = []

    def make(topics: dict[str, int]) -> ComposeCluster:
        cluster = ComposeCluster(compose, docker_client, shoal_image, tmp_path / f"c{len(clusters)}", topics)
        clusters.append(cluster)
        cluster.up()
        return cluster

    yield make
    for cluster in clusters:
        try:
            print(cluster.logs())
        finally:
            cluster.down()
