"""Redis servers a test starts for itself on loopback: one without persistence (restartable, to lose its data), and
a three-node Redis Cluster. Debian's ``redis-server`` and ``redis-cli``; every process stopped by its PID."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from fusionrec.infra.stack import free_port

__all__ = ["RedisCluster3", "VolatileRedis"]


def _start(directory: Path, port: int, *extra: str) -> subprocess.Popen:
    directory.mkdir(parents=True, exist_ok=True)
    log = open(directory / "redis.log", "ab")  # noqa: SIM115 - the child holds it; closed when we stop it
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory), *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port, socket_timeout=1).ping()
            return proc
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server on port {port} did not start; see {directory / 'redis.log'}"
                ) from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class VolatileRedis:
    """One ``redis-server`` without RDB or AOF: :meth:`restart` brings it back empty, on the same port."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = _start(directory, self.port)

    def restart(self) -> None:
        _stop(self.proc)
        self.proc = _start(self.directory, self.port)

    def stop(self) -> None:
        _stop(self.proc)


class RedisCluster3:
    """Three primaries, no replicas, every slot assigned (``redis-cli --cluster create``); ``url`` names one node."""

    def __init__(self, directory: Path):
        self.procs: list[subprocess.Popen] = []
        self.ports = [free_port() for _ in range(3)]
        try:
            for port in self.ports:
                node = directory / str(port)
                self.procs.append(
                    _start(
                        node,
                        port,
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node / "nodes.conf"),
                        "--cluster-port",
                        str(free_port()),  # not port + 10000, which may be taken or too high
                    )  # fmt: skip
                )
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
            deadline = time.monotonic() + 20
            while any(redis.Redis(port=p).cluster("info").get("cluster_state") != "ok" for p in self.ports):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not reach cluster_state:ok")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"

    def stop(self) -> None:
        for proc in self.procs:
            _stop(proc)
