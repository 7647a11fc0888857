"""``shoal cluster up|info`` through the real entry point, with real broker processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.harness import free_port, http_json

SHOAL = [sys.executable, "-m", "shoal.router.cli.main"]


def shoal(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*SHOAL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def write_config(root: Path, n: int = 3, **extra) -> Path:
    config = {
        "cluster": "cli-test",
        "epoch": 1,
        "brokers": [{"id": i, "url": f"http://127.0.0.1:{free_port()}"} for i in range(1, n + 1)],
        "topics": {"orders": {"partitions": 6}, "audit": {"partitions": 1, "flush": "always"}},
        **extra,
    }
    path = root / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Up:
    """A running ``shoal cluster up`` (its stdout read until the broker table is complete,
    its stderr collected line by line as it comes)."""

    def __init__(self, root: Path, *args: str):
        self.proc = subprocess.Popen(
            [*SHOAL, "cluster", "up", "--grace", "5", *args],
            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.err_lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.err_lines.extend(self.proc.stderr), daemon=True)
        self._reader.start()

    def wait_for_line(self, *parts: str, timeout: float = 30) -> str:
        """The first stderr line containing every one of ``parts``, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in list(self.err_lines) if all(p in line for p in parts)]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no line with {parts} in {self.err_lines}"
            assert self.proc.poll() is None, f"cluster up ended: {self.err_lines}"
            time.sleep(0.05)

    def wait_ready(self, n: int) -> list[dict]:
        """The broker rows of the ready table (read with ``-o json``)."""
        out = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"cluster up ended early: {self.proc.wait()} {self.proc.stderr.read()}")
            out += line
            if line.startswith("}"):
                self.view = json.loads(out)
                assert len(self.view["brokers"]) == n
                return self.view["brokers"]
        raise AssertionError("cluster up did not print its table in time")

    def finish(self, sig: int | None = signal.SIGINT) -> tuple[int, str]:
        """Send ``sig`` (None: just wait) and return the exit code and the rest of stderr."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        self._end(30)
        return self.proc.returncode, "".join(self.err_lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self._end(10)

    def _end(self, timeout: float) -> None:
        """Wait for the exit; stderr is the reader thread's to drain (communicate() would race it)."""
        self.proc.wait(timeout)
        self._reader.join(timeout)
        self.proc.stdout.close()
        self.proc.stderr.close()


def gone(pid: int, timeout: float = 15) -> bool:
    """Whether process ``pid`` is gone (reaped, or a zombie nobody waits for) before the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


@pytest.fixture
def up(tmp_path):
    started: list[Up] = []

    def start(*args: str) -> Up:
        started.append(Up(tmp_path, *args))
        return started[-1]

    yield start
    for u in started:
        u.kill()


def test_up_info_and_ctrl_c_leaves_nothing_running(tmp_path, up):
    config = write_config(tmp_path)
    cluster = up("-o", "json")
    rows = cluster.wait_ready(3)
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert rows[0]["data_dir"] == "data/broker-1" and rows[0]["log"] == "data/broker-1.log"

    info = shoal("cluster", "info", "-o", "json", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    view = json.loads(info.stdout)
    assert view["cluster"] == "cli-test" and view["epoch"] == 1
    assert [(b["id"], b["status"], b["epoch"]) for b in view["brokers"]] == [(1, "ok", 1), (2, "ok", 1), (3, "ok", 1)]
    assert [t["name"] for t in view["topics"]] == ["audit", "orders"]
    assert len(view["topics"][1]["owners"]) == 6

    text = shoal("cluster", "info", "--config", str(config), cwd=tmp_path.parent)
    assert text.returncode == 0, text.stderr
    assert "BROKERS\nID  URL" in text.stdout and "orders  6" in text.stdout

    rc, err = cluster.finish(signal.SIGINT)
    assert rc == 0, err
    assert "stopped 3 brokers" in err
    assert all(gone(r["pid"]) for r in rows)
    assert "broker 1 stopped" in (tmp_path / "data/broker-1.log").read_text()


def alive(pid: int) -> bool:
    return not gone(pid, timeout=0)


def broker_states(root: Path) -> dict[int, str]:
    info = shoal("cluster", "info", "-o", "json", cwd=root)
    assert info.returncode == 0, info.stderr
    return {b["id"]: b["status"] for b in json.loads(info.stdout)["brokers"]}


def test_a_killed_broker_is_restarted_while_the_others_keep_serving(tmp_path, up):
    """kill -9 of one broker: the supervisor says so, restarts it, and leaves the others alone."""
    config = yaml.safe_load(write_config(tmp_path).read_text())
    cluster = up("-o", "json")
    rows = cluster.wait_ready(3)
    os.kill(rows[1]["pid"], signal.SIGKILL)
    died = cluster.wait_for_line("broker 2 was killed by signal 9")
    assert died.startswith("broker 2 was killed by signal 9; see data/broker-2.log: ")
    assert died.endswith("; its partitions are unavailable until it is back; restarting it in 1s\n")
    back = cluster.wait_for_line("broker 2 is back")
    assert back.startswith(f"broker 2 is back at {config['brokers'][1]['url']} (pid ") and back.endswith(", restart 1)\n")
    assert alive(rows[0]["pid"]) and alive(rows[2]["pid"]) and gone(rows[1]["pid"], timeout=0)
    assert broker_states(tmp_path) == {1: "ok", 2: "ok", 3: "ok"}
    rc, err = cluster.finish(signal.SIGINT)
    assert rc == 0, err
    assert "stopped 3 brokers" in err and "Traceback" not in err


@contextlib.contextmanager
def port_thief(port: int):
    """Hold a dead broker's port so that its restarts fail with "address already in use".

    A plain bind would fail while the dead broker's connections linger (FIN_WAIT2,
    TIME_WAIT); a listener with SO_REUSEADDR binds past them and still keeps the broker
    out. Every connection it gets is reset at once, so the port looks as dead as a
    refused one."""
    thief = socket.socket()
    thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # The kernel lets go of a killed process's listener a moment after the process is a
    # zombie (up to 10 ms seen), and the supervisor's first restart comes 1 s after death.
    deadline = time.monotonic() + 0.5
    while True:
        try:
            thief.bind(("127.0.0.1", port))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
    thief.listen()

    def reset_all() -> None:
        while True:
            try:
                conn, _ = thief.accept()
            except OSError:  # the listener was closed
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    resetter = threading.Thread(target=reset_all, daemon=True)
    resetter.start()
    try:
        yield
    finally:
        thief.shutdown(socket.SHUT_RDWR)
        thief.close()
        resetter.join(5)


def test_a_broker_that_cannot_start_is_retried_with_growing_delays(tmp_path, up):
    """A crash loop does not spin: while its port is taken, broker 2 is tried again after
    1s, 2s, 4s; brokers 1 and 3 serve meanwhile, and broker 2 comes back once it can."""
    config = yaml.safe_load(write_config(tmp_path).read_text())
    url = config["brokers"][1]["url"]
    cluster = up("-o", "json")
    rows = cluster.wait_ready(3)
    os.kill(rows[1]["pid"], signal.SIGKILL)
    assert gone(rows[1]["pid"])
    with port_thief(int(url.rsplit(":", 1)[1])):
        for delay in ("2s", "4s"):
            line = cluster.wait_for_line("restarting it in " + delay)
            assert line.startswith("broker 2 exited with code 1; see data/broker-2.log: unable to start broker 2: ")
            assert "address already in use" in line
        assert broker_states(tmp_path) == {1: "ok", 2: "down", 3: "ok"}
    cluster.wait_for_line("broker 2 is back")
    assert broker_states(tmp_path) == {1: "ok", 2: "ok", 3: "ok"}
    assert alive(rows[0]["pid"]) and alive(rows[2]["pid"])
    assert cluster.finish(signal.SIGINT)[0] == 0


def test_a_broker_stopped_cleanly_stays_down_and_says_how_to_start_it(tmp_path, up):
    write_config(tmp_path, n=2)
    cluster = up("-o", "json")
    rows = cluster.wait_ready(2)
    os.kill(rows[0]["pid"], signal.SIGTERM)
    line = cluster.wait_for_line("broker 1 exited with code 0")
    assert line.endswith("stays down (its partitions are unavailable): "
                         "start it with `shoal broker start --id 1 --config cluster.yaml`\n")
    assert broker_states(tmp_path) == {1: "down", 2: "ok"}
    rc, err = cluster.finish(signal.SIGINT)
    assert rc == 0 and "stopped 1 broker\n" in err
    assert err.count("broker 1 exited") == 1  # said once, not at every look


def test_brokers_die_with_a_killed_supervisor(tmp_path, up):
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux only")
    write_config(tmp_path, n=2)
    cluster = up("-o", "json")
    rows = cluster.wait_ready(2)
    cluster.kill()
    assert all(gone(r["pid"]) for r in rows)


def test_port_in_use_is_reported_before_starting_anything(tmp_path):
    config = write_config(tmp_path, n=2)
    port = yaml.safe_load(config.read_text())["brokers"][1]["url"].rsplit(":", 1)[1]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", int(port)))
        busy.listen()
        result = shoal("cluster", "up", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        f"unable to run cluster: port {port} of broker 2 (http://127.0.0.1:{port}) is already in use; "
        "is a cluster already running? (shoal cluster info)\n"
    )
    assert not (tmp_path / "data").exists()


def test_broker_failing_to_start_is_named_with_its_log(tmp_path):
    (tmp_path / "cluster.yaml").write_text(
        f"brokers: [{{id: 7, url: 'http://192.0.2.1:{free_port()}', data_dir: b7}}]\n"
    )
    result = shoal("cluster", "up", "--ready-timeout", "20", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("unable to run cluster: broker 7 exited with code 1 before it was ready; see b7.log: ")
    assert "Traceback" not in result.stderr


def test_invalid_topology_lists_every_problem(tmp_path):
    (tmp_path / "cluster.yaml").write_text("epoch: x\nbrokers: []\n")
    result = shoal("cluster", "up", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        "unable to run cluster: 2 problems:\n"
        "  cluster.yaml:1: epoch: must be an integer >= 0, got 'x'\n"
        "  cluster.yaml:2: brokers: at least one broker is needed\n"
    )


def test_info_without_a_running_cluster_is_one_line(tmp_path):
    config = write_config(tmp_path, n=1)
    url = yaml.safe_load(config.read_text())["brokers"][0]["url"]
    result = shoal("cluster", "info", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"unable to get cluster info: no broker answered ({url} connection refused); "
        "is the cluster up? (shoal cluster up)\n"
    )


def test_missing_config_file(tmp_path):
    result = shoal("cluster", "info", "--config", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "unable to get cluster info: nope.yaml: cannot read the topology: No such file or directory\n"


def test_broker_start_unknown_id(tmp_path):
    write_config(tmp_path, n=1)
    result = shoal("broker", "start", "--id", "9", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "unable to start broker: no broker with id 9 in cluster.yaml\n"


def test_broker_start_serves_until_sigterm(tmp_path):
    config = write_config(tmp_path, n=1)
    url = yaml.safe_load(config.read_text())["brokers"][0]["url"]
    proc = subprocess.Popen([*SHOAL, "broker", "start", "--id", "1", "--log-format", "json"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        result = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            result = shoal("cluster", "info", "-o", "json", cwd=tmp_path)
            if result.returncode == 0:
                break
        assert result is not None and result.returncode == 0, result and result.stderr
        assert json.loads(result.stdout)["brokers"] == [
            {"id": 1, "url": url, "status": "ok", "epoch": 1, "error": None}
        ]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0
        assert json.loads(err.splitlines()[0])["logger"].startswith("shoal")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def etcd_endpoint() -> str:
    """A free loopback client port whose peer port (+1) is free too."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return f"http://127.0.0.1:{port}"


def test_up_with_start_local_runs_etcd_reports_a_failover_and_stops_etcd_last(tmp_path, up):
    """A replicated cluster with its local etcd; kill -9 of a leader: one line names the new
    leaders and the time, one more says when the restarted broker is in sync again."""
    endpoint = etcd_endpoint()
    write_config(tmp_path, metadata={"etcd": [endpoint], "start_local": True, "lease_ttl_ms": 2000},
                 defaults={"replication_factor": 3, "min_insync_replicas": 2})  # fmt: skip
    cluster = up("-o", "json")
    rows = cluster.wait_ready(3)
    etcd = cluster.view["etcd"]
    assert (etcd["url"], etcd["data_dir"], etcd["log"]) == (endpoint, "data/etcd", "data/etcd.log")
    assert http_json("GET", endpoint + "/health") == (200, {"health": "true"})
    assert (tmp_path / "data/etcd/member").is_dir()

    def settled():
        status, body = http_json("GET", rows[0]["url"] + "/v1/cluster", timeout=2)
        states = [s for t in body.get("partitions", {}).values() for s in t]
        return states and all(s and s["leader"] >= 0 and len(s["isr"]) == 3 for s in states) and states

    deadline = time.monotonic() + 30
    while not (states := settled()):
        assert time.monotonic() < deadline, "the partitions did not settle"
        time.sleep(0.1)
    led = {b: sum(s["leader"] == b for s in states) for b in (1, 2, 3)}
    victim = max(led, key=led.get)
    time.sleep(1.5)  # the supervisor reads the leaders once a second; let it see these
    os.kill(rows[victim - 1]["pid"], signal.SIGKILL)
    died = cluster.wait_for_line(f"broker {victim} was killed by signal 9")
    assert "the partitions it led get new leaders once its etcd lease lapses; restarting it in 1s" in died
    moved = cluster.wait_for_line(f"broker {victim} is down: ")
    others = " and ".join(rf"{b} \(\d+\)" for b in (1, 2, 3) if b != victim)
    pattern = rf"broker {victim} is down: {led[victim]} partitions? moved leader to ({others}|\d \(\d+\)) in \d+\.\ds\n"
    assert re.fullmatch(pattern, moved), moved
    synced = cluster.wait_for_line(f"broker {victim} is in sync again")
    assert re.fullmatch(rf"broker {victim} is in sync again: in the ISR of all its 7 partitions, \d+\.\ds after it was back\n", synced)

    rc, err = cluster.finish(signal.SIGINT)
    assert rc == 0 and "Traceback" not in err, err
    assert err.index("stopped 3 brokers") < err.index("stopped etcd")
    assert gone(etcd["pid"]) and all(gone(r["pid"]) for r in rows if r["id"] != victim)


def test_a_dead_etcd_stops_the_cluster_with_exit_1(tmp_path, up):
    write_config(tmp_path, n=1, metadata={"etcd": [etcd_endpoint()], "start_local": True})
    cluster = up("-o", "json")
    rows = cluster.wait_ready(1)
    os.kill(cluster.view["etcd"]["pid"], signal.SIGKILL)
    rc, err = cluster.finish(None)
    assert rc == 1
    assert "unable to run cluster: etcd was killed by signal 9; see data/etcd.log" in err
    assert gone(rows[0]["pid"])


def test_start_local_without_etcd_installed_says_how_to_get_it(tmp_path):
    write_config(tmp_path, n=1, metadata={"etcd": [etcd_endpoint()], "start_local": True})
    empty = tmp_path / "empty-path"
    empty.mkdir()
    result = subprocess.run(
        [*SHOAL, "cluster", "up"], cwd=tmp_path, capture_output=True, text=True, timeout=30,
        env={**os.environ, "PATH": str(empty)},
    )
    assert result.returncode == 1
    assert result.stderr == (
        "unable to run cluster: metadata.start_local needs etcd, which is not installed: apt-get install etcd-server "
        "(or point metadata.etcd at a running etcd and set start_local: false)\n"
    )
    assert not (tmp_path / "data").exists()
