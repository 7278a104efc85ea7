"""The worker's probes and metrics on one HTTP port: ``/livez``, ``/readyz`` and ``/metrics``.

* ``/livez`` — the process answers and its event loop is responsive: the worker beats :class:`Health` from a
  task on the loop every second, and a beat older than ``stall_after_s`` (the loop blocked or wedged) answers
  503. Before the first beat (the app still building, the item side restoring) it answers 200 ``starting``, for
  ``startup_grace_s`` at most.
* ``/readyz`` — 200 only once the consumer group has assigned this worker its partitions *and* their state is
  restored from the snapshots; 503 while it starts, during a rebalance (from revocation until the new assignment is
  restored) and once it is stopping. An empty assignment (more workers than partitions) is ready: the group is
  settled and the worker is a standby.
* anything else — the Prometheus exposition of ``registry`` (as ``prometheus_client.start_http_server`` serves it).

The server runs in daemon threads, off the event loop, so a stalled loop is reported rather than hiding the port.
:class:`Health` is written from the event loop and read from the server's threads; each field is one assignment.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

__all__ = ["Health", "HealthServer", "make_app", "serve_health"]

#: A loop that has not beaten for this long is reported dead (timers are 1 s; GC and forks pause it briefly).
STALL_AFTER_S = 30.0
#: How long ``/livez`` answers ``starting`` before the first beat.
STARTUP_GRACE_S = 600.0


class Health:
    """What the probes report: the event loop's last beat and the readiness of the partition assignment."""

    def __init__(
        self,
        stall_after_s: float = STALL_AFTER_S,
        startup_grace_s: float = STARTUP_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
        on_ready: Callable[[bool], None] | None = None,
    ):
        self.stall_after_s = stall_after_s
        self.startup_grace_s = startup_grace_s
        self.clock = clock
        self.on_ready = on_ready
        self.started = clock()
        self.last_beat: float | None = None
        self.generation = 0  # one per assignment; a restore of an older one does not make the worker ready
        #: (ready, reason, partitions) as one value, so a reader never sees a mix of two states.
        self.state: tuple[bool, str, tuple[int, ...]] = (False, "starting: no partitions assigned yet", ())
        #: Problems that keep the worker not ready whatever its assignment (name -> reason): a lost events topic.
        self.problems: dict[str, str] = {}

    # --- written from the event loop -----------------------------------------------------------------------------

    def beat(self) -> None:
        self.last_beat = self.clock()

    def revoked(self) -> None:
        """A rebalance started: not ready until the next assignment is restored."""
        self.generation += 1
        self._set(False, "rebalancing: partitions revoked", ())

    def assigned(self, partitions: Iterable[int]) -> int:
        """Partitions assigned, their state not restored yet; returns the generation to pass to :meth:`restored`."""
        self.generation += 1
        mine = tuple(sorted(partitions))
        self._set(False, f"restoring partitions {list(mine)}", mine)
        return self.generation

    def restored(self, generation: int) -> bool:
        """The assignment of ``generation`` is restored: ready, unless a newer rebalance began meanwhile."""
        if generation != self.generation:
            return False
        mine = self.state[2]
        self._set(True, f"ready: partitions {list(mine)} assigned and restored", mine)
        return True

    def stopping(self) -> None:
        self.generation += 1
        self._set(False, "stopping", ())

    def problem(self, name: str, reason: str | None) -> None:
        """Report (``reason``) or clear (``None``) a problem that keeps the worker not ready."""
        if reason is None:
            self.problems.pop(name, None)
        else:
            self.problems[name] = reason
        self._publish()

    def _set(self, ready: bool, reason: str, partitions: tuple[int, ...]) -> None:
        self.state = (ready, reason, partitions)
        self._publish()

    def _publish(self) -> None:
        if self.on_ready is not None:
            self.on_ready(self.is_ready)

    # --- read from the server's threads ------------------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        return self.state[0] and not self.problems

    def live(self) -> tuple[bool, dict]:
        now = self.clock()
        beat = self.last_beat
        if beat is None:
            starting = now - self.started
            ok = starting <= self.startup_grace_s
            return ok, {"live": ok, "reason": f"starting for {starting:.0f} s, event loop not beating yet"}
        age = now - beat
        ok = age <= self.stall_after_s
        reason = "event loop responsive" if ok else f"event loop stalled: no beat for {age:.0f} s"
        return ok, {"live": ok, "reason": reason, "last_beat_s": round(age, 3)}

    def ready(self) -> tuple[bool, dict]:
        ready, reason, partitions = self.state
        problems = dict(self.problems)
        if problems:
            ready, reason = False, "; ".join(problems.values())
        return ready, {"ready": ready, "reason": reason, "partitions": list(partitions)}


def make_app(health: Health, registry: CollectorRegistry = REGISTRY) -> Callable:
    """The WSGI app: the two probes, and the metrics on every other path."""
    metrics = make_wsgi_app(registry)
    probes = {"/livez": health.live, "/readyz": health.ready}

    def app(environ, start_response):
        probe = probes.get(environ.get("PATH_INFO", ""))
        if probe is None:
            return metrics(environ, start_response)
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        ok, body = probe()
        payload = orjson.dumps(body) + b"\n"
        start_response(
            "200 OK" if ok else "503 Service Unavailable",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else payload]

    return app


class _Silent(WSGIRequestHandler):
    def log_message(self, format, *args):  # the base class's signature; probes are not logged
        pass


class HealthServer:
    """The HTTP server, on ``bind:port`` (port 0: a free one), serving from daemon threads until :meth:`close`."""

    def __init__(self, bind: str, port: int, health: Health, registry: CollectorRegistry = REGISTRY):
        family, host = _family(bind, port)

        class Server(ThreadingMixIn, WSGIServer):
            address_family = family
            daemon_threads = True

        self.health = health
        self.server = make_server(host, port, make_app(health, registry), Server, handler_class=_Silent)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name="fusionrec-health", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _family(bind: str, port: int) -> tuple[socket.AddressFamily, str]:
    info = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = info[0]
    return family, address[0]


def serve_health(port: int, bind: str, health: Health, registry: CollectorRegistry = REGISTRY) -> HealthServer | None:
    """Serve the probes and the metrics on ``bind:port`` (None for port 0: nothing served)."""
    return HealthServer(bind, port, health, registry) if port else None
