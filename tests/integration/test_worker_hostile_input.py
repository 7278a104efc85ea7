"""The worker against hostile but honest input, on the real broker and Redis (issue 12, findings 3, 4 and 6): a
re-sent file with new timestamps, another user's copies of real event ids, dead letters of up to ~1 MB in a mixed
batch, absurd values and a record key that is not the user."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections import Counter

import orjson
import redis

from fusionrec.consumers.reader import read_topic
from fusionrec.contracts.events import Event
from fusionrec.producers.producer import EventProducer
from fusionrec.stores.profiles import ProfileStore
from tests.integration.workers import WorkerProcess, expected_counts, handled, make_events, send

#: Malformed values of every size up to what the events producer sends (~1 MB), mixed with small ones.
BIG_SIZES = [50_000, 200_000, 400_000, 600_000, 700_000, 770_000, 800_000, 850_000, 900_000, 950_000, 990_000]


def malformed() -> list[bytes]:
    rng = os.urandom
    out = [b"x" * size for size in BIG_SIZES[::2]]  # oversize text
    out += [b'{"event_id": "' + base64.b64encode(rng(size))[: size - 20] + b'"}' for size in BIG_SIZES[1::2]]
    out += [b"not json", b"\xff\xfe", b"[]", b'{"type": "view"}', rng(300_000), b"{" * 100]
    return out


def test_resent_file_forged_ids_and_dead_letters_of_any_size(worker_settings, tmp_path):
    now = int(time.time() * 1000)
    events = make_events(1500, seed=21, start_ms=now - 60_000)
    # another user's events carrying real users' ids, sent first and stamped alike (same dedup bucket before)
    forged = [Event(e.event_id, f"mallory-{i}", "junk", "view", e.ts) for i, e in enumerate(events[:200])]
    bad = malformed()
    absurd = [
        Event("abs-1", "user-1", "item-1", "purchase", now, quantity=1_000_000),
        Event("abs-2", "user-2", "item-2", "purchase", now, price=1e308),
    ]
    strangers = events[1000:1003]  # valid events, keyed by someone else: they would build state on a wrong partition
    with EventProducer(worker_settings, validate=False) as producer:
        for event in forged:
            producer.send(event)
        for raw in bad:
            producer.send_raw(b"bad-key", raw)
        for event in absurd:
            producer.send(event)
        for event in strangers:
            producer.send_raw(b"someone-else", event.to_json())
    assert producer.stats.delivered == len(forged) + len(bad) + len(absurd) + len(strangers)
    kept = [e for e in events if e not in strangers]
    send(worker_settings, kept)
    rejected = len(bad) + len(absurd) + len(strangers)

    worker = WorkerProcess(worker_settings, tmp_path, "w")
    try:
        worker.wait_for(lambda m: handled(m) >= len(forged) + len(kept) + rejected, timeout=120)
        # the same file again, restamped as `replay --timestamps wallclock` does: new records, the same ids
        resent_at = int(time.time() * 1000)
        resent = [e._replace(ts=resent_at + i) for i, e in enumerate(kept)]
        send(worker_settings, resent)
        metrics = worker.wait_for(lambda m: handled(m) >= len(forged) + 2 * len(kept) + rejected, timeout=120)
        time.sleep(1.0)  # nothing more arrives late
        metrics = worker.metrics()
    finally:
        worker.stop()

    assert metrics["fusionrec_worker_events_total"] == len(forged) + len(kept)
    assert metrics["fusionrec_worker_duplicates_skipped_total"] == len(resent)
    assert metrics["fusionrec_worker_dead_letter_total"] == rejected
    assert metrics.get("fusionrec_worker_dead_letter_errors_total", 0) == 0
    assert metrics["fusionrec_worker_dead_letter_truncated_total"] >= 3  # the largest ones had to be cut

    store = ProfileStore(redis.Redis.from_url(worker_settings.redis.url), worker_settings.redis.keys)
    expected = expected_counts(kept + forged)
    assert {p.user_id: Counter(p.counts) for p in store.get_many(sorted(expected))} == expected

    letters = [
        orjson.loads(v)
        for _p, _o, _k, v in read_topic(worker_settings, worker_settings.topic.dead_letter, idle_timeout=5)
    ]
    assert len(letters) == rejected  # every one arrived, the ~1 MB ones included
    sent = {hashlib.sha256(raw).hexdigest(): raw for raw in bad}
    sent |= {hashlib.sha256(e.to_json()).hexdigest(): e.to_json() for e in absurd + strangers}
    assert sorted(r["original_sha256"] for r in letters) == sorted(sent)
    for record in letters:
        original = sent[record["original_sha256"]]
        kept_bytes = base64.b64decode(record["original_b64"])
        assert record["original_size"] == len(original) and original.startswith(kept_bytes)
        assert ("original" in record.get("truncated", [])) == (len(kept_bytes) < len(original))
    codes = Counter(r["reasons"][0]["code"] for r in letters)
    assert codes["key_mismatch"] == len(strangers) and codes["bad_value"] == len(absurd)
    reasons = {r["reasons"][0]["field"] for r in letters if r["reasons"][0]["code"] == "bad_value"}
    assert reasons == {"quantity", "price"}


def test_a_record_the_checks_raise_on_is_dead_lettered_not_retried(worker_settings, monkeypatch):
    """A bug in the checks (as the fuzzer found: ``validate`` raised TypeError on a list ``type``) must cost the one
    record, with a reason, not fail its batch again and again and stop every partition the agent serves."""
    from fusionrec.streams import apply as apply_module
    from fusionrec.streams.apply import BatchApplier
    from fusionrec.streams.batching import Record, RecordBatch
    from fusionrec.streams.state import PartitionRegistry, SnapshotStore

    conf = worker_settings
    client = redis.Redis.from_url(conf.redis.url)
    events = make_events(50, seed=31, start_ms=int(time.time() * 1000) - 60_000)
    records = [Record(n, e.key, e.to_json(), e.ts) for n, e in enumerate(events)]
    poisoned = records[20].value
    checks = apply_module.validate

    def buggy(value, **kwargs):
        if value == poisoned:
            raise TypeError("unhashable type: 'list'")
        return checks(value, **kwargs)

    monkeypatch.setattr(apply_module, "validate", buggy)
    applier = BatchApplier(
        PartitionRegistry(SnapshotStore(client, conf, "checks")), ProfileStore.from_settings(conf, client), conf.event
    )
    out = applier.apply(RecordBatch(conf.topic.events, 0, records))
    assert out.applied == 49 and len(out.dead_letters) == 1
    letter = orjson.loads(out.dead_letters[0].value)
    assert letter["reasons"][0]["code"] == "check_failed" and "TypeError" in letter["reasons"][0]["message"]
    assert applier.check_failures == 1
