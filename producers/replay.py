"""Replay a behaviour file into the events topic as if a shop were sending it live.

Pacing: ``rate`` (events per second), ``speed`` (time compression: 60 plays an hour of data in a minute) or
neither (as fast as the producer goes). Timestamps: ``wallclock`` stamps each event with the time it is sent
(what a live shop would do, so latency and freshness metrics mean something), ``original`` keeps the file's.
Event ids do not depend on either, so replaying a file twice is idempotent downstream.

A broker restart does not stop a replay: the producer recreates itself and re-sends what was not acknowledged
(:class:`~fusionrec.infra.resilient.ResilientProducer`); the result says how often, and the longest stall.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from fusionrec.contracts.events import Event
from fusionrec.producers.producer import EventProducer

__all__ = ["Pacer", "ReplayResult", "replay_events"]

log = logging.getLogger("fusionrec.replay")


class Pacer:
    """Tells how long to wait before the ``i``-th event so that a target rate or time compression holds."""

    def __init__(
        self,
        *,
        rate: float | None = None,
        speed: float | None = None,
        first_ts: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if rate is not None and speed is not None:
            raise ValueError("give either rate or speed, not both")
        if (rate is not None and rate <= 0) or (speed is not None and speed <= 0):
            raise ValueError("rate and speed must be positive")
        self.rate, self.speed, self.first_ts, self.clock = rate, speed, first_ts, clock
        self.start = clock()

    def due(self, index: int, ts_ms: int) -> float:
        """Seconds after the start at which event ``index`` (stamped ``ts_ms``) should be sent."""
        if self.rate is not None:
            return index / self.rate
        if self.speed is not None:
            return (ts_ms - self.first_ts) / 1000.0 / self.speed
        return 0.0

    def wait(self, index: int, ts_ms: int) -> float:
        """Sleep until event ``index`` is due (only when at least 2 ms early); return the time slept."""
        ahead = self.due(index, ts_ms) - (self.clock() - self.start)
        if ahead > 0.002:
            time.sleep(ahead)
            return ahead
        return 0.0


@dataclass
class ReplayResult:
    sent: int
    delivered: int
    failed: int
    undelivered: int
    seconds: float
    resets: int = 0  # the producer was recreated this many times (fatal errors, a broker restart)
    resent: int = 0  # events sent again after a reset
    max_stall_s: float = 0.0  # the longest wait for an acknowledgement seen while sending

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def replay_events(
    events: list[Event],
    producer: EventProducer,
    *,
    rate: float | None = None,
    speed: float | None = None,
    timestamps: str = "wallclock",
    progress: Callable[[int], None] | None = None,
    flush_timeout: float = 60.0,
) -> ReplayResult:
    """Send ``events`` (already in timestamp order) through ``producer``; flush and report what was delivered."""
    if timestamps not in {"wallclock", "original"}:
        raise ValueError("timestamps must be 'wallclock' or 'original'")
    pacer = Pacer(rate=rate, speed=speed, first_ts=events[0].ts if events else 0)
    paced = rate is not None or speed is not None
    started = time.perf_counter()
    step = 0
    max_stall = 0.0
    for index, event in enumerate(events):
        if paced:
            pacer.wait(index, event.ts)
        if timestamps == "wallclock":
            event = event._replace(ts=int(time.time() * 1000))
        producer.send(event)
        step += 1
        if step == 1000:
            max_stall = max(max_stall, producer.stall_s)
            if progress is not None:
                progress(step)
            step = 0
    if progress is not None and step:
        progress(step)
    undelivered = producer.flush(flush_timeout)
    seconds = time.perf_counter() - started
    stats = producer.stats
    if stats.failed or undelivered:
        log.error("replay: %d failed, %d undelivered; first errors: %s", stats.failed, undelivered, stats.errors[:3])
    if stats.resets:
        log.warning("replay: the producer was recreated %d times; %d events re-sent", stats.resets, stats.resent)
    return ReplayResult(
        stats.sent, stats.delivered, stats.failed, undelivered, seconds, stats.resets, stats.resent, max_stall
    )
