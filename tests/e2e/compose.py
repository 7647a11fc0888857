"""The compose cluster of deploy/docker-compose.yml, run under a unique project name.

Each ``ComposeCluster`` writes its own cluster.yaml on free loopback ports and brings the
compose file up with the variables it documents, so runs never collide with each other
or with a cluster already on 9091-9093. The docker SDK then finds its containers by the
compose labels for the faults the tests inject.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import yaml

from tests.harness import free_port, http_json

if TYPE_CHECKING:
    import docker

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
BROKER_IDS = (1, 2, 3)
T = TypeVar("T")


def compose_command() -> list[str] | None:
    """``docker compose`` where the plugin is installed, else ``docker-compose``; None if neither runs."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        if subprocess.run([*cmd, "version"], capture_output=True, timeout=60).returncode == 0:
            return cmd
    return None


def wait_for(check: Callable[[], T], what: str, timeout: float = 30.0, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - any failure is "not yet"; the last is reported
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not after {timeout:g} s" + (f" (last error: {last!r})" if last else ""))
        time.sleep(interval)


class ComposeCluster:
    """The three brokers and the gateway of deploy/docker-compose.yml, under a project of their own.

    Args:
        compose: the compose command (see ``compose_command``).
        client: a docker SDK client.
        image: the shoal image to run.
        workdir: where the cluster.yaml is written.
        topics: topic name -> partition count.
    """

    def __init__(self, compose: list[str], client: docker.DockerClient, image: str, workdir: Path,
                 topics: dict[str, int]):
        self.compose = compose
        self.client = client
        self.image = image
        self.project = f"shoal-e2e-{uuid.uuid4().hex[:10]}"
        self.ports = {i: free_port() for i in BROKER_IDS}
        self.gateway_port = free_port()
        # The containers' non-root user reads this folder, mounted as /etc/shoal.
        self.config_dir = workdir
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.config_dir.chmod(0o755)
        self.config_path = self.config_dir / "cluster.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "cluster": self.project,
            "epoch": 1,
            "defaults": {"partitions": 3, "flush": "interval", "flush_interval_ms": 50},
            "brokers": [{"id": i, "url": self.url(i)} for i in BROKER_IDS],
            "topics": {name: {"partitions": n} for name, n in topics.items()},
        }, sort_keys=False))
        self.config_path.chmod(0o644)
        self.extra: list = []  # containers started beside the compose services

    # --- addresses ---------------------------------------------------------------------

    def url(self, broker_id: int) -> str:
        return f"http://127.0.0.1:{self.ports[broker_id]}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def urls(self) -> list[str]:
        return [self.url(i) for i in BROKER_IDS]

    def owners(self, topic: str) -> list[int]:
        """Owning broker id of each partition of ``topic``, from any broker that answers."""
        for url in self.urls:
            try:
                status, body = http_json("GET", url + "/v1/cluster", timeout=3)
            except OSError:
                continue
            if status == 200:
                return body["owners"][topic]
        raise RuntimeError(f"no broker of {self.project} answers GET /v1/cluster")

    # --- compose -----------------------------------------------------------------------

    def run_compose(self, *args: str, timeout: float = 120) -> str:
        env = {
            "SHOAL_IMAGE": self.image,
            "SHOAL_CONFIG_DIR": str(self.config_dir),
            "SHOAL_GATEWAY_PORT": str(self.gateway_port),
            **{f"SHOAL_PORT_{i}": str(port) for i, port in self.ports.items()},
        }
        proc = subprocess.run(
            [*self.compose, "--project-name", self.project, "--file", str(COMPOSE_FILE), *args],
            capture_output=True, text=True, timeout=timeout, env={**os.environ, **env},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(self.compose)} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc.stdout

    def up(self) -> None:
        self.run_compose("up", "--detach")
        for i in BROKER_IDS:
            self.wait_serving(i)
        wait_for(lambda: http_json("GET", self.gateway_url + "/v1/health", timeout=2)[0] == 200,
                 f"gateway of {self.project} serving")

    def ps(self) -> str:
        return self.run_compose("ps")

    def logs(self) -> str:
        return self.run_compose("logs", "--no-color", "--tail", "60")

    def down(self) -> None:
        """Remove containers, network and volumes; then sweep whatever compose left behind."""
        from docker.errors import NotFound

        for container in self.extra:
            try:
                container.remove(force=True, v=True)
            except NotFound:
                pass  # the test removed it already
        for container in self.containers():
            if container.status == "paused":
                container.unpause()
        try:
            self.run_compose("down", "--volumes", "--remove-orphans", "--timeout", "3")
        finally:
            label = f"com.docker.compose.project={self.project}"
            for container in self.client.containers.list(all=True, filters={"label": label}):
                container.remove(force=True, v=True)
            for network in self.client.networks.list(filters={"label": label}):
                network.remove()
            for volume in self.client.volumes.list(filters={"label": label}):
                volume.remove(force=True)

    # --- containers --------------------------------------------------------------------

    def containers(self) -> list:
        return self.client.containers.list(all=True, filters={"label": f"com.docker.compose.project={self.project}"})

    def run(self, name: str, **kwargs):
        """``docker run --detach`` of the shoal image beside the cluster, removed by ``down()``."""
        container = self.client.containers.run(self.image, name=f"{self.project}-{name}", detach=True, **kwargs)
        self.extra.append(container)
        return container

    def service(self, name: str):
        """The container of service ``name`` (fresh state on every call)."""
        found = self.client.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.project}",
            f"com.docker.compose.service={name}",
        ]})
        if len(found) != 1:
            raise RuntimeError(f"{self.project}: {len(found)} containers for {name}")
        return found[0]

    def broker(self, broker_id: int):
        return self.service(f"broker-{broker_id}")

    def network(self):
        """The project's private network (the one the brokers are attached to)."""
        networks = self.client.networks.list(filters={"label": f"com.docker.compose.project={self.project}"})
        if len(networks) != 1:
            raise RuntimeError(f"{self.project}: expected one network, found {[n.name for n in networks]}")
        return networks[0]

    def serving(self, broker_id: int) -> bool:
        try:
            status, body = http_json("GET", self.url(broker_id) + "/v1/health", timeout=2)
        except OSError:
            return False
        return status == 200 and body.get("broker_id") == broker_id

    def wait_serving(self, broker_id: int, timeout: float = 30.0) -> None:
        try:
            wait_for(lambda: self.serving(broker_id), f"broker {broker_id} of {self.project} serving", timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.broker(broker_id).logs(tail=40).decode(errors='replace')}") from None

    def health(self, service: str) -> str:
        """Docker's HEALTHCHECK verdict for a service: starting, healthy or unhealthy."""
        return self.service(service).attrs["State"].get("Health", {}).get("Status", "none")
