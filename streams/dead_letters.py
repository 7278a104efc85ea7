"""Delivering a batch's dead letters: every one acknowledged by the broker before the batch may be, counted then.

Faust acknowledges a batch once its agent moves on, or crashes, so the agent must not move on before each dead
letter is on the topic, and it must not crash on one: a send that fails is retried with backoff, and one the
producer or the broker refuses as too large is shrunk (:func:`~fusionrec.contracts.dead_letters.shrink_dead_letter`)
and sent again. ``fusionrec_worker_dead_letter_total`` counts a dead letter once the broker acknowledged it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from fusionrec.contracts.dead_letters import shrink_dead_letter
from fusionrec.streams.metrics import WorkerMetrics

__all__ = ["DeadLetter", "deliver"]

log = logging.getLogger("fusionrec.worker")

_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)

#: ``send(key=..., value=...)``: Faust's ``Topic.send``, which returns the future of the broker's acknowledgement.
Send = Callable[..., Awaitable[Awaitable[Any]]]


class DeadLetter(NamedTuple):
    """A dead letter still to be sent: its record key and value, and its first reason (the metric's label)."""

    key: bytes | None
    value: bytes
    reason: str


async def deliver(
    send: Send,
    letters: Sequence[DeadLetter],
    metrics: WorkerMetrics | None = None,
    *,
    retry_s: float = 0.5,
    max_retry_s: float = 30.0,
) -> None:
    """Send ``letters`` and return once the broker has acknowledged every one (retrying, shrinking, never giving
    up: a dead letter dropped here would be an event lost without a trace)."""
    waiting = list(letters)
    delay = retry_s
    while waiting:
        results = await asyncio.gather(*(_send_one(send, letter) for letter in waiting), return_exceptions=True)
        again, transient = [], False
        for letter, result in zip(waiting, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if not isinstance(result, BaseException):
                if metrics:
                    metrics.dead_letter.labels(letter.reason).inc()
                continue
            if metrics:
                metrics.dead_letter_errors.inc()
            smaller = _shrunk(letter) if _too_large(result) else None
            if smaller is not None:
                log.warning("dead letter of %d bytes refused as too large; sending %d", len(letter.value), len(smaller))
                again.append(letter._replace(value=smaller))
                if metrics:
                    metrics.dead_letter_truncated.inc()
            else:
                log.warning("dead letter not delivered (%s: %s); retrying", type(result).__name__, result)
                again.append(letter)
                transient = True
        if transient:  # the broker is away or refusing: wait before trying again
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_retry_s)
        waiting = again


async def _send_one(send: Send, letter: DeadLetter) -> Any:
    acknowledged = await send(key=letter.key, value=letter.value)
    return await acknowledged


def _too_large(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it wraps: Faust wraps the producer's errors) says the record is too large."""
    for _ in range(8):  # a chain of causes, never a cycle in practice; bounded all the same
        if exc is None:
            return False
        if isinstance(exc, _TOO_LARGE):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _shrunk(letter: DeadLetter) -> bytes | None:
    """The letter cut to half its size, or None when it cannot get smaller (nothing left to cut)."""
    smaller = shrink_dead_letter(letter.value, len(letter.value) // 2)
    return smaller if len(smaller) < len(letter.value) else None
