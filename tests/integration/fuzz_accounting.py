"""Exact accounting of a worker run over a topic of mixed valid and fuzzed records (issue 12).

The reference is computed from the events topic as read back (partition by partition, in offset order, which is
the order the worker sees), independently of the worker: each record is a control record (a JSON object with a
top-level ``"control"`` field: :func:`~fusionrec.contracts.control.parse_control`) or an event checked by the
contract's :func:`~fusionrec.contracts.events.validate` with the record's key, as docs/events.md states; a valid
event is applied unless its ``event_id`` is among the user's last ``dedup.max_ids`` applied ones
(docs/worker.md, "Exactly once in effect"), a window this module keeps itself. Then it counts, exactly:

* per user and event type, applied in Redis against the reference: **lost** (fewer) and **doubled** (more);
* the user's dedup window in Redis (the digests of the last applied ids, the last record processed, the
  duplicates' offsets) against the reference's;
* per rejected record, its dead letters (by source partition and offset): none is **lost**, none **doubled**,
  the reason codes are the contract's, the digest is of the record's bytes; a dead letter for a valid record is
  **wrongly rejected**.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis

from fusionrec.consumers.reader import read_topic
from fusionrec.contracts.control import parse_control
from fusionrec.contracts.events import validate
from fusionrec.contracts.privacy import Pseudonymiser
from fusionrec.contracts.settings import Settings
from fusionrec.producers.producer import EventProducer
from fusionrec.stores.dedup import SeenIds, digest
from fusionrec.stores.profiles import ProfileStore
from fusionrec.streams.child import WorkerChild

log = logging.getLogger(__name__)

__all__ = ["Accounting", "account", "handle"]


@dataclass
class _Window:
    ids: deque = field(default_factory=deque)
    partition: int = -1
    offset: int = -1
    skipped: list = field(default_factory=list)


@dataclass
class Accounting:
    """What the run did, against the reference."""

    on_topic: int = 0
    topic_missing: int = 0  # sent, not on the topic (the producer's side)
    topic_extra: int = 0  # on the topic more often than sent
    valid: int = 0  # records that are valid events (fuzzed ones included)
    applied_expected: int = 0
    duplicates_expected: int = 0
    rejected_expected: Counter = field(default_factory=Counter)  # by first reason code
    applied: int = 0  # in Redis, summed over users and types
    lost: int = 0
    doubled: int = 0
    unexpected_users: int = 0  # profiles in Redis of users the reference never applied
    dedup_mismatches: int = 0
    dead_letters: int = 0
    dead_letters_lost: int = 0
    dead_letters_doubled: int = 0
    wrongly_rejected: int = 0
    reason_mismatches: int = 0
    digest_mismatches: int = 0
    raw_ids_in_dead_letters: int = 0  # with pseudonyms on: letters that still hold the record's raw user id
    valid_fuzzed: Counter = field(default_factory=Counter)  # fuzzed records that were valid events, by mutation
    # (a fuzzed record with the very bytes and key of a valid event, an exact re-send, is counted in ``valid`` only)
    examples: list = field(default_factory=list)  # a few of whatever went wrong

    @property
    def clean(self) -> bool:
        return not (
            self.topic_missing
            or self.topic_extra
            or self.lost
            or self.doubled
            or self.unexpected_users
            or self.dedup_mismatches
            or self.dead_letters_lost
            or self.dead_letters_doubled
            or self.wrongly_rejected
            or self.reason_mismatches
            or self.digest_mismatches
        )

    def note(self, what: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(what)


def handled(m) -> float:
    """Records the worker has finished with: applied, skipped as duplicates, or dead-lettered (acknowledged)."""
    return (
        m.get("fusionrec_worker_events_total", 0)
        + m.get("fusionrec_worker_duplicates_skipped_total", 0)
        + m.get("fusionrec_worker_dead_letter_total", 0)
    )


def handle(settings: Settings, sent, log_dir: Path, *, stall_s: float = 60.0) -> tuple[dict, float]:
    """Send ``sent`` (``(key, value, kind)`` records) to the events topic, then let one real worker handle them:
    return its metrics once it has handled as many records as were sent (or made no progress for ``stall_s``),
    and the seconds from the first send."""
    failures: list[str] = []
    started = time.monotonic()
    with EventProducer(settings, validate=False, on_delivery=lambda e, _m: e and failures.append(e.str())) as producer:
        for key, value, _kind in sent:
            producer.send_raw(key, value)
    if failures:
        raise RuntimeError(f"{len(failures)} records were not acknowledged: {failures[:3]}")
    worker = WorkerChild(settings, log_dir / "worker.log", FUSIONREC_STATE_DIR=str(log_dir / "w"))
    try:
        last, since = -1.0, time.monotonic()
        while True:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.proc.returncode}; see {worker.log_path}")
            now = handled(worker.metrics())
            if now >= len(sent):
                break
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > stall_s:
                log.error("the worker stopped at %d of %d records; see %s", now, len(sent), worker.log_path)
                break
            time.sleep(0.25)
        seconds = time.monotonic() - started
        time.sleep(1.5)  # nothing more arrives late
        metrics = dict(worker.metrics())
    finally:
        worker.stop()
    return metrics, seconds


def _classify(settings: Settings, key, value):
    """``(event, reasons)`` for one record, as the contract says the worker must see it."""
    if value is not None and b'"control"' in value:
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            obj = None
        if type(obj) is dict and "control" in obj:
            control = parse_control(value, key)
            assert isinstance(control, list), f"the fuzzer sent a valid control record: {control}"
            return None, control
    limits = settings.event
    result = validate(
        value,
        max_bytes=limits.max_bytes,
        max_future_skew_ms=limits.max_future_skew_ms,
        max_price=limits.max_price,
        max_quantity=limits.max_quantity,
        key=key,
    )
    return result.event, result.reasons


def _raw_ids(key: bytes | None, value: bytes | None) -> set[bytes]:
    """The record's user ids a pseudonymised dead letter must not keep: its key, and its payload's ``user_id``
    (ids of three bytes or fewer are left out); a payload holds one as a JSON string, quotes included."""
    out = {key} if key else set()
    try:
        user = orjson.loads(value).get("user_id") if value else None
    except (orjson.JSONDecodeError, AttributeError):
        user = None
    if type(user) is str:
        out.add(user.encode())
    return {raw for raw in out if len(raw) > 3}


def account(settings: Settings, sent: list[tuple[bytes | None, bytes | None, str]], *, idle_timeout=5.0) -> Accounting:
    """Read the events topic, the dead-letter topic and Redis back and account for every record of ``sent``."""
    acc = Accounting()
    sent_count = Counter((key, value) for key, value, _kind in sent)
    records = sorted(read_topic(settings, settings.topic.events, idle_timeout=idle_timeout))
    acc.on_topic = len(records)
    topic_count = Counter((k, v) for _p, _o, k, v in records)
    acc.topic_missing = sum(max(n - topic_count[kv], 0) for kv, n in sent_count.items())
    acc.topic_extra = sum(max(n - sent_count[kv], 0) for kv, n in topic_count.items())

    max_ids = settings.dedup.max_ids
    pseudonyms = Pseudonymiser.from_settings(settings)  # with a key, state is kept under the users' pseudonyms
    windows: dict[str, _Window] = {}
    expected: dict[str, Counter] = {}
    rejected: dict[tuple[int, int], tuple[list[str], bytes | None]] = {}
    accepted: set[tuple[int, int]] = set()
    keys: dict[tuple[int, int], bytes | None] = {}
    fuzzed_values = {(k, v): kind for k, v, kind in sent if kind != "valid"}
    valid_values = {(k, v) for k, v, kind in sent if kind == "valid"}
    for partition, offset, key, value in records:
        event, reasons = _classify(settings, key, value)
        if event is None:
            rejected[(partition, offset)] = ([r.code for r in reasons], value)
            keys[(partition, offset)] = key
            acc.rejected_expected[reasons[0].code] += 1
            continue
        acc.valid += 1
        accepted.add((partition, offset))
        if (key, value) not in valid_values and (key, value) in fuzzed_values:
            acc.valid_fuzzed[fuzzed_values[(key, value)]] += 1
        user = pseudonyms.user(event.user_id)
        w = windows.setdefault(user, _Window())
        if w.partition != partition:
            w.partition, w.skipped = partition, []
        w.offset = offset
        if event.event_id in w.ids:
            acc.duplicates_expected += 1
            w.skipped.append(offset)
            del w.skipped[:-max_ids]
            continue
        acc.applied_expected += 1
        w.ids.append(event.event_id)
        if len(w.ids) > max_ids:
            w.ids.popleft()
        expected.setdefault(user, Counter())[event.type] += 1

    client = redis.Redis.from_url(settings.redis.url)
    try:
        store = ProfileStore.from_settings(settings, client)
        users = sorted(expected)
        got = {p.user_id: Counter(p.counts) for p in store.get_many(users)} if users else {}
        for user, want in expected.items():
            have = got.get(user, Counter())
            for etype in set(want) | set(have):
                diff = have[etype] - want[etype]
                acc.applied += have[etype]
                if diff < 0:
                    acc.lost -= diff
                    acc.note(f"lost: {user!r} {etype} {want[etype]} expected, {have[etype]} applied")
                elif diff > 0:
                    acc.doubled += diff
                    acc.note(f"doubled: {user!r} {etype} {want[etype]} expected, {have[etype]} applied")
        profiles = sum(1 for _ in client.scan_iter(match=f"{settings.redis.prefix}p:*", count=1000))
        acc.unexpected_users = max(profiles - len(expected), 0)
        for user, w in windows.items():
            raw = client.get(settings.redis.keys.dedup(user))
            seen = SeenIds.decode(raw, max_ids)
            want_digests = b"".join(digest(i) for i in w.ids)
            if (bytes(seen.digests), seen.partition, seen.offset, seen.skipped) != (
                want_digests,
                w.partition,
                w.offset,
                w.skipped,
            ):
                acc.dedup_mismatches += 1
                acc.note(
                    f"dedup window of {user!r}: {len(seen)} ids at {seen.offset}, expected {len(w.ids)} at {w.offset}"
                )
    finally:
        client.close()

    letters: Counter = Counter()
    for _p, _o, _k, raw in read_topic(settings, settings.topic.dead_letter, idle_timeout=idle_timeout):
        acc.dead_letters += 1
        letter = orjson.loads(raw)
        source = (letter["source"]["partition"], letter["source"]["offset"])
        letters[source] += 1
        if source in accepted:
            acc.wrongly_rejected += 1
            acc.note(f"dead letter for a valid record at {source}: {letter['reasons']}")
            continue
        if source not in rejected:
            acc.note(f"dead letter for no record at {source}")
            acc.wrongly_rejected += 1
            continue
        codes, value = rejected[source]
        if not letter["reasons"] or [r["code"] for r in letter["reasons"]] != codes:
            acc.reason_mismatches += 1
            acc.note(f"reasons at {source}: {[r['code'] for r in letter['reasons']]}, expected {codes}")
        if pseudonyms.enabled:  # the letter keeps the pseudonymised payload: its digest is of that
            raw_ids = _raw_ids(keys[source], value)
            kept, kept_key = (base64.b64decode(letter[f] or "") for f in ("original_b64", "key_b64"))
            if any(
                b'"' + orjson.dumps(raw.decode("utf-8", "replace"))[1:-1] + b'"' in kept or raw == kept_key
                for raw in raw_ids
            ):
                acc.raw_ids_in_dead_letters += 1
                if acc.raw_ids_in_dead_letters <= 3:
                    acc.note(f"a raw user id in the dead letter at {source}: {kept[:120]!r}")
        elif value is not None and letter.get("original_sha256") != hashlib.sha256(value).hexdigest():
            acc.digest_mismatches += 1
            acc.note(f"digest at {source} is not the record's")
    for source in rejected:
        n = letters[source]
        if n == 0:
            acc.dead_letters_lost += 1
            acc.note(f"no dead letter for the rejected record at {source}: {rejected[source][0]}")
        elif n > 1:
            acc.dead_letters_doubled += n - 1
    return acc
