"""The compose cluster of deploy/docker-compose.yml, run under a unique project name.

Each ``ComposeCluster`` writes its own cluster.yaml (deploy/cluster.yaml on free loopback
ports) and brings the compose file up with the variables it documents, so runs never
collide with each other or with a cluster already on 9091-9093 and 2379. The docker SDK
then finds its containers by the compose labels for the faults the tests inject.
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
    """etcd, the three brokers and the gateway of deploy/docker-compose.yml, under a project of their own.

    Its cluster.yaml is deploy/cluster.yaml (replication, metadata, defaults) with its own
    cluster name, free ports for every address and ``topics`` for the topics.

    Args:
        compose: the compose command (see ``compose_command``).
        client: a docker SDK client.
        images: the shoal image and the etcd image to run.
        workdir: where the cluster.yaml is written.
        topics: topic name -> partition count.
    """

    def __init__(self, compose: list[str], client: docker.DockerClient, images: tuple[str, str], workdir: Path,
                 topics: dict[str, int]):
        self.compose = compose
        self.client = client
        self.image, self.etcd_image = images
        self.project = f"shoal-e2e-{uuid.uuid4().hex[:10]}"
        self.ports = {i: free_port() for i in BROKER_IDS}
        self.kafka_ports = {i: free_port() for i in BROKER_IDS}
        self.gateway_port, self.etcd_port, self.etcd_peer_port = free_port(), free_port(), free_port()
        # The containers' non-root user reads this folder, mounted as /etc/shoal.
        self.config_dir = workdir
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.config_dir.chmod(0o755)
        self.config_path = self.config_dir / "cluster.yaml"
        config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
        config["cluster"] = self.project
        config["metadata"]["etcd"] = [f"http://127.0.0.1:{self.etcd_port}"]
        config["brokers"] = [{"id": i, "url": self.url(i), "kafka": self.kafka_address(i)} for i in BROKER_IDS]
        config["topics"] = {name: {"partitions": n} for name, n in topics.items()}
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.config_path.chmod(0o644)
        self.extra: list = []  # containers started beside the compose services

    # --- addresses ---------------------------------------------------------------------

    def url(self, broker_id: int) -> str:
        return f"http://127.0.0.1:{self.ports[broker_id]}"

    def kafka_address(self, broker_id: int) -> str:
        return f"127.0.0.1:{self.kafka_ports[broker_id]}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def urls(self) -> list[str]:
        return [self.url(i) for i in BROKER_IDS]

    def view(self, via: int | None = None) -> dict:
        """``GET /v1/cluster`` of broker ``via``, else of the first broker that answers."""
        for broker_id in [via] if via is not None else BROKER_IDS:
            try:
                status, body = http_json("GET", self.url(broker_id) + "/v1/cluster", timeout=3)
            except OSError:
                continue
            if status == 200:
                return body
        raise RuntimeError(f"no broker of {self.project} answers GET /v1/cluster" + (f" (asked {via})" if via else ""))

    def owners(self, topic: str) -> list[int]:
        """The leader (owner) of each partition of ``topic``."""
        return self.view()["owners"][topic]

    def partition(self, topic: str, partition: int, via: int | None = None) -> dict:
        """``{"leader", "leader_epoch", "replicas", "isr"}`` of one partition, as etcd holds it."""
        return self.view(via)["partitions"][topic][partition]

    def in_sync(self) -> bool:
        """Every partition led and every replica in its ISR, as every broker sees it."""
        for broker_id in BROKER_IDS:
            states = self.view(broker_id)["partitions"]
            if not all(s["leader"] != -1 and sorted(s["isr"]) == sorted(s["replicas"])
                       for topic in states.values() for s in topic):
                return False
        return True

    # --- compose -----------------------------------------------------------------------

    def run_compose(self, *args: str, timeout: float = 120) -> str:
        env = {
            "SHOAL_IMAGE": self.image,
            "SHOAL_ETCD_IMAGE": self.etcd_image,
            "SHOAL_CONFIG_DIR": str(self.config_dir),
            "SHOAL_GATEWAY_PORT": str(self.gateway_port),
            "SHOAL_ETCD_PORT": str(self.etcd_port),
            "SHOAL_ETCD_PEER_PORT": str(self.etcd_peer_port),
        }
        proc = subprocess.run(
            [*self.compose, "--project-name", self.project, "--file", str(COMPOSE_FILE), *args],
            capture_output=True, text=True, timeout=timeout, env={**os.environ, **env},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(self.compose)} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc.stdout

    def up(self) -> None:
        """``compose up``, then wait until every broker serves and every partition is fully in sync."""
        self.run_compose("up", "--detach", timeout=300)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 90.0) -> None:
        """Every broker and the gateway serving, every partition led with its full ISR."""
        for i in BROKER_IDS:
            self.wait_serving(i, timeout)
        wait_for(lambda: http_json("GET", self.gateway_url + "/v1/health", timeout=2)[0] == 200,
                 f"gateway of {self.project} serving", timeout)
        wait_for(self.in_sync, f"every partition of {self.project} fully in sync", timeout, interval=0.25)

    def heal(self) -> None:
        """Undo whatever a test left: paused containers resumed, stopped ones started; then wait healthy."""
        for container in self.containers():
            if container.status == "paused":
                container.unpause()
            elif container.status in ("exited", "created"):
                container.start()
        self.wait_healthy()

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
