"""A private Redis Cluster: three masters from Debian's redis-server, for the cluster runs of
the cache, coalescing and rate-limit tests.

Each node runs on a private port (and a cluster-bus port of its own, set explicitly: the
default, port + 10000, may not exist for a high free port) with its own data directory;
``redis-cli --cluster create`` assigns the 16384 slots. The machine's shared server on
6379 is never touched. VLM_TEST_REDIS_CLUSTER_PORT pins the ports (six from there: three
clients, three buses, then the next six for the next cluster) for a machine that hands out
port ranges; else free ports.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from redis.crc import key_slot

from localstack.processes import free_port

SHARED_REDIS = "redis://127.0.0.1:6379/0"
MASTERS = 3
# A node that stops answering is marked failed after this long (Redis' default: 15 s).
NODE_TIMEOUT_MS = 2000


class RedisTarget(NamedTuple):
    """Where a test's Redis is, and whether the gateway must speak cluster to it."""

    url: str
    cluster: bool


STANDALONE = RedisTarget(SHARED_REDIS, cluster=False)


_clusters_made = itertools.count()


def _next_pinned_ports() -> int:
    """The first of this cluster's six pinned ports; 0 when no ports are pinned."""
    base = int(os.environ.get("VLM_TEST_REDIS_CLUSTER_PORT", "0"))
    return base + 2 * MASTERS * next(_clusters_made) if base else 0


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/bin/{name}"


def _cli(port: int, *args: str) -> str:
    done = subprocess.run(
        [_tool("redis-cli"), "-p", str(port), *args], capture_output=True, check=False, timeout=30
    )
    return done.stdout.decode(errors="replace")


class PrivateCluster:
    def __init__(
        self, directory: Path, base_port: int | None = None, full_coverage: bool = True
    ) -> None:
        """``full_coverage`` False: the nodes left serve their slots while one is down."""
        self.directory = directory
        self.full_coverage = full_coverage
        pinned = base_port or _next_pinned_ports()
        if pinned:
            ports = list(range(pinned, pinned + 2 * MASTERS))
        else:
            ports = [free_port() for _ in range(2 * MASTERS)]
        self.ports, self.bus_ports = ports[:MASTERS], ports[MASTERS:]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def target(self) -> RedisTarget:
        """The first node as the seed: the client discovers the others from it."""
        return RedisTarget(f"redis://127.0.0.1:{self.ports[0]}/0", cluster=True)

    def start(self) -> None:
        for port, bus in zip(self.ports, self.bus_ports, strict=True):
            self._start_node(port, bus)
        self._wait(self._answering, "a node did not start")
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        created = subprocess.run(
            [_tool("redis-cli"), "--cluster", "create", *nodes,
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, check=False, timeout=60,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout!r}")
        self._wait(self.healthy, "cluster did not become ok")

    def _start_node(self, port: int, bus: int) -> None:
        data = self.directory / str(port)
        data.mkdir(parents=True, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [_tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-port", str(bus),
             "--cluster-config-file", str(data / "nodes.conf"),
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--cluster-require-full-coverage", "yes" if self.full_coverage else "no",
             "--save", "", "--appendonly", "no", "--dir", str(data), "--daemonize", "no",
             "--logfile", str(data / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def _answering(self) -> bool:
        return all(_cli(port, "ping").strip() == "PONG" for port in self.ports)

    def healthy(self) -> bool:
        """Every node sees every slot served and every other node."""
        for port in self.ports:
            info = _cli(port, "cluster", "info")
            if "cluster_state:ok" not in info or f"cluster_known_nodes:{MASTERS}" not in info:
                return False
        return True

    @staticmethod
    def _wait(check: Callable[[], bool], message: str, within_s: float = 30.0) -> None:
        deadline = time.monotonic() + within_s
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(message)
            time.sleep(0.1)

    def port_of_slot(self, slot: int) -> int:
        """The port of the node serving ``slot``."""
        live = next(p for p in self.ports if self.processes[p].poll() is None)
        for line in _cli(live, "cluster", "nodes").splitlines():
            fields = line.split()
            address = fields[1].split("@")[0]
            for ranges in fields[8:]:
                low, _, high = ranges.partition("-")
                if int(low) <= slot <= int(high or low):
                    return int(address.rsplit(":", 1)[1])
        raise LookupError(f"no node serves slot {slot}")

    def node_of(self, key: str) -> int:
        """The port of the node that serves ``key``."""
        return self.port_of_slot(key_slot(key.encode()))

    def key_on_each_node(self, prefix: str) -> dict[int, str]:
        """A hash-tagged key per node, {port: key}: "<prefix>{<n>}"."""
        keys: dict[int, str] = {}
        n = 0
        while len(keys) < MASTERS:
            key = f"{prefix}{{{n}}}"
            keys.setdefault(self.node_of(key), key)
            n += 1
        return keys

    def pattern_subscribers(self) -> dict[int, int]:
        """Connections with a pattern subscription, by the port of the (live) node."""
        return {
            port: _cli(port, "client", "list").count(" psub=1 ")
            for port in self.ports
            if self.processes[port].poll() is None
        }

    def kill(self, port: int) -> None:
        process = self.processes[port]
        process.kill()
        process.wait()

    def freeze(self, port: int) -> None:
        os.kill(self.processes[port].pid, signal.SIGSTOP)

    def thaw(self, port: int) -> None:
        os.kill(self.processes[port].pid, signal.SIGCONT)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)  # a frozen node must hear the TERM
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
