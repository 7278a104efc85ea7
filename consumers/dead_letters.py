"""The dead-letter topic, read and re-driven: what ``fusionrec dlq list|show|redrive`` does.

Reads the topic without a consumer group (:func:`fusionrec.consumers.reader.read_topic`: every partition from the
start, until nothing has arrived for ``idle_timeout`` seconds, since Tansu's end offsets cannot be trusted).
A dead letter is named by its position on the dead-letter topic, ``partition:offset`` (or just the offset on a
one-partition topic, the default).

Re-driving produces a letter's original value and key to the events topic again, for the worker to judge anew
(after a fix, or with raised limits): one that is still invalid becomes a dead letter again, with its reasons. A
letter that kept only part of the original (``truncated``) or none of it (``withheld``) cannot be re-driven. A
letter whose ids were pseudonymised (``FUSIONREC_PRIVACY_USER_KEY``) is sent to the partition it came from (its
key is a pseudonym now, which would hash elsewhere) with a header only a holder of the key can make, so the worker
does not hash its ids a second time (:data:`~fusionrec.contracts.privacy.REDRIVEN_HEADER`).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Producer

from fusionrec.consumers.reader import read_topic
from fusionrec.contracts.privacy import REDRIVEN_HEADER, Pseudonymiser
from fusionrec.contracts.settings import Settings

__all__ = ["DeadLetterEntry", "Redrive", "parse_position", "read_dead_letters", "redrive"]


@dataclass(frozen=True)
class DeadLetterEntry:
    """One record of the dead-letter topic: where it is, and the dead letter it holds (``letter``, the decoded
    JSON; ``None`` when the record is not a dead letter at all)."""

    partition: int
    offset: int
    size: int  # bytes of the dead-letter record itself
    letter: dict[str, Any] | None

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        reasons = (self.letter or {}).get("reasons") or [{"code": "?"}]
        return str(reasons[0].get("code", "?"))

    @property
    def reasons(self) -> list[dict[str, str]]:
        return list((self.letter or {}).get("reasons") or [])

    @property
    def rejected_at(self) -> int | None:
        return (self.letter or {}).get("rejected_at")

    @property
    def original_size(self) -> int | None:
        return (self.letter or {}).get("original_size")

    @property
    def source(self) -> dict[str, Any]:
        return (self.letter or {}).get("source") or {}

    def original(self) -> bytes | None:
        """The original value as the letter keeps it (None when it had none, or it was withheld)."""
        encoded = (self.letter or {}).get("original_b64")
        return None if encoded is None else base64.b64decode(encoded)

    def key(self) -> bytes | None:
        encoded = (self.letter or {}).get("key_b64")
        return None if encoded is None else base64.b64decode(encoded)

    def cut(self) -> list[str]:
        """What the letter does not hold whole: the fields in ``truncated`` and ``withheld``."""
        letter = self.letter or {}
        return [*letter.get("truncated", []), *letter.get("withheld", [])]

    @property
    def pseudonymised(self) -> bool:
        return bool((self.letter or {}).get("pseudonymised"))


def read_dead_letters(
    settings: Settings, *, reason: str | None = None, idle_timeout: float = 3.0
) -> Iterator[DeadLetterEntry]:
    """Every dead letter on ``settings.topic.dead_letter`` (only those whose first reason is ``reason``, if given),
    partition by partition interleaved, each in offset order."""
    for partition, offset, _key, value in read_topic(settings, settings.topic.dead_letter, idle_timeout=idle_timeout):
        try:
            letter = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            letter = None
        entry = DeadLetterEntry(partition, offset, len(value or b""), letter if type(letter) is dict else None)
        if reason is None or entry.reason == reason:
            yield entry


def parse_position(text: str) -> tuple[int | None, int]:
    """``"3:120"`` → ``(3, 120)``; ``"120"`` → ``(None, 120)`` (any partition)."""
    partition, sep, offset = text.partition(":")
    if not sep:
        return None, int(text)
    return int(partition), int(offset)


def select(entries: Iterable[DeadLetterEntry], positions: Iterable[str]) -> list[DeadLetterEntry]:
    """The entries at ``positions`` (``partition:offset`` or ``offset``), in the order given."""
    wanted = [parse_position(p) for p in positions]
    by_position = {(e.partition, e.offset): e for e in entries}
    out = []
    for partition, offset in wanted:
        found = [e for (p, o), e in by_position.items() if o == offset and (partition is None or p == partition)]
        out += found
    return out


@dataclass(frozen=True)
class Redrive:
    """What re-driving one dead letter did (or, in a dry run, would do)."""

    entry: DeadLetterEntry
    sent: bool
    partition: int | None = None  # the events partition it was sent to (None: by its key)
    skipped: str | None = None  # why it was not re-driven


def redrive(settings: Settings, entries: Iterable[DeadLetterEntry], *, dry_run: bool = False) -> list[Redrive]:
    """Produce each letter's original value and key to the events topic; return what happened to each (wait for
    the broker's acknowledgement of every record sent)."""
    pseudonyms = Pseudonymiser.from_settings(settings)
    plans: list[tuple[DeadLetterEntry, bytes, bytes | None, int | None, list]] = []
    out: list[Redrive] = []
    for entry in entries:
        value, why = entry.original(), None
        if entry.letter is None:
            why = "not a dead letter"
        elif entry.cut():
            why = f"the letter does not hold the whole record ({', '.join(entry.cut())}); see the events topic at " + (
                f"partition {entry.source.get('partition')} offset {entry.source.get('offset')}"
            )
        elif value is None:
            why = "the rejected record had no value"
        elif entry.pseudonymised and not pseudonyms.enabled:
            why = "its ids are pseudonyms: re-driving it needs FUSIONREC_PRIVACY_USER_KEY"
        if why is not None:
            out.append(Redrive(entry, False, skipped=why))
            continue
        headers, partition = [], None
        if entry.pseudonymised:
            headers = [(REDRIVEN_HEADER, pseudonyms.tag(value))]
            source = entry.source
            if source.get("topic") == settings.topic.events and isinstance(source.get("partition"), int):
                partition = source["partition"]  # the user's partition, which the pseudonym key would not hash to
        plans.append((entry, value, entry.key(), partition, headers))
    if dry_run or not plans:
        return out + [Redrive(entry, False, partition) for entry, _v, _k, partition, _h in plans]

    acked: dict[int, str | None] = {}
    producer = Producer(settings.producer_config(**{"client.id": f"{settings.kafka.client_id}-dlq-redrive"}))
    for n, (_entry, value, key, partition, headers) in enumerate(plans):

        def delivered(err, _msg, n=n) -> None:
            acked[n] = None if err is None else str(err)

        kwargs: dict[str, Any] = {"on_delivery": delivered}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(settings.topic.events, value, key, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(30.0)
    for n, (entry, _v, _k, partition, _h) in enumerate(plans):
        error = acked.get(n, "not acknowledged within 30 s")
        out.append(Redrive(entry, error is None, partition, skipped=None if error is None else error))
    return out
