"""The Faust worker end to end on the real broker and Redis: exact profiles, exact dead letters, crash recovery."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import time
from collections import Counter

import orjson
import redis

from fusionrec.consumers.reader import read_topic
from fusionrec.contracts.topics import topic_specs
from fusionrec.infra.admin import describe_topics
from fusionrec.stores.profiles import ProfileStore
from tests.integration.workers import (
    MALFORMED,
    WorkerProcess,
    all_snapshotted,
    expected_counts,
    handled,
    item_side_settled,
    make_events,
    model_fingerprint,
    send,
)


def test_profiles_and_dead_letters_are_exact(worker_settings, tmp_path):
    now = int(time.time() * 1000)
    events = make_events(3000, seed=1, start_ms=now - 60_000)
    duplicates = events[100:150]
    send(worker_settings, events, raw=MALFORMED, duplicates=duplicates)
    total = len(events) + len(duplicates) + len(MALFORMED)

    worker = WorkerProcess(worker_settings, tmp_path, "w")
    try:
        metrics = worker.wait_for(lambda m: handled(m) >= total)
        assert metrics["fusionrec_worker_events_total"] == len(events)
        assert metrics["fusionrec_worker_duplicates_skipped_total"] == len(duplicates)
        assert metrics["fusionrec_worker_dead_letter_total"] == len(MALFORMED)
    finally:
        worker.stop()

    store = ProfileStore(redis.Redis.from_url(worker_settings.redis.url), worker_settings.redis.keys)
    expected = expected_counts(events)
    profiles = store.get_many(sorted(expected))
    assert {p.user_id: Counter(p.counts) for p in profiles} == expected

    letters = [
        orjson.loads(v)
        for _p, _o, _k, v in read_topic(worker_settings, worker_settings.topic.dead_letter, idle_timeout=3)
    ]
    assert len(letters) == len(MALFORMED)
    assert sorted(base64.b64decode(r["original_b64"]) for r in letters) == sorted(MALFORMED)
    assert all(r["reasons"] and r["source"]["topic"] == worker_settings.topic.events for r in letters)
    codes = Counter(r["reasons"][0]["code"] for r in letters)
    assert codes == Counter(
        {"not_json": 1, "missing_field": 1, "bad_encoding": 1, "not_an_object": 1, "unknown_type": 1}
    )


def test_kill_9_mid_stream_then_restart_matches_an_uninterrupted_run(worker_settings, tmp_path):
    now = int(time.time() * 1000)
    first, second = make_events(4000, seed=2, start_ms=now - 120_000), make_events(4000, seed=3, start_ms=now - 60_000)
    # part of the first file re-sent, restamped, ahead of the second: duplicates the crash is likely to catch
    # processed but not yet snapshotted, so the restart sees them again as redelivered duplicates
    resent = [e._replace(ts=now - 60_000) for e in first[:300]]
    send(worker_settings, first)

    crashed = WorkerProcess(worker_settings, tmp_path, "crashed")
    crashed.wait_for(
        lambda m: (
            m.get("fusionrec_worker_snapshots_total", 0) >= 1
            and m.get("fusionrec_worker_events_total", 0) >= len(first)
        )
    )
    send(worker_settings, resent + second)
    crashed.wait_for(lambda m: m.get("fusionrec_worker_events_total", 0) > len(first))
    crashed.stop(signal.SIGKILL)

    restarted = WorkerProcess(worker_settings, tmp_path, "restarted")
    try:
        metrics = restarted.wait_for(
            lambda m: (
                m.get("fusionrec_worker_events_total", 0) + m.get("fusionrec_worker_redelivered_total", 0) >= 1
                and all_snapshotted(worker_settings, len(first) + len(resent) + len(second))
                and item_side_settled(worker_settings, first + second)
            )
        )
    finally:
        restarted.stop()
    assert metrics.get("fusionrec_worker_duplicates_skipped_total", 0) <= len(resent)  # those the crash left
    print(
        "restarted: redelivered",
        metrics.get("fusionrec_worker_redelivered_total", 0),
        "duplicates",
        metrics.get("fusionrec_worker_duplicates_skipped_total", 0),
    )

    clean = worker_settings.replace(
        redis_prefix=worker_settings.redis.prefix + "clean:", worker_group=worker_settings.worker.group + "-clean"
    )
    reference = WorkerProcess(clean, tmp_path, "reference")
    try:
        clean_metrics = reference.wait_for(
            lambda m: (
                m.get("fusionrec_worker_events_total", 0) >= len(first) + len(second)
                and all_snapshotted(clean, len(first) + len(resent) + len(second))
                and item_side_settled(clean, first + second)
            )
        )
    finally:
        reference.stop()
    assert clean_metrics["fusionrec_worker_duplicates_skipped_total"] == len(resent)

    store = ProfileStore(redis.Redis.from_url(worker_settings.redis.url), worker_settings.redis.keys)
    clean_store = ProfileStore(redis.Redis.from_url(clean.redis.url), clean.redis.keys)
    users = sorted(expected_counts(first + second))
    assert store.get_many(users) == clean_store.get_many(users)
    assert {p.user_id: Counter(p.counts) for p in store.get_many(users)} == expected_counts(first + second)
    assert model_fingerprint(worker_settings) == model_fingerprint(clean)


def test_rebuild_replays_everything_from_the_topic(worker_settings, tmp_path):
    events = make_events(1500, seed=5, start_ms=int(time.time() * 1000) - 30_000)
    send(worker_settings, events)
    first = WorkerProcess(worker_settings, tmp_path, "before")
    try:
        first.wait_for(
            lambda m: (
                m.get("fusionrec_worker_events_total", 0) >= len(events)
                and all_snapshotted(worker_settings, len(events))
            )
        )
    finally:
        first.stop()

    out = subprocess.run(
        [sys.executable, "-m", "fusionrec.apps.cli", "rebuild", "--yes"],
        env=first.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "deleted" in out.stdout and worker_settings.item_side_topic in out.stdout
    client = redis.Redis.from_url(worker_settings.redis.url)
    assert not list(client.scan_iter(match=f"{worker_settings.redis.prefix}*"))
    item_specs = [spec for spec in topic_specs(worker_settings) if spec.role == "item_side"]
    assert not describe_topics(worker_settings, item_specs)[0].exists  # derived state: the next workers recreate it

    again = WorkerProcess(worker_settings, tmp_path, "after")
    try:
        metrics = again.wait_for(lambda m: m.get("fusionrec_worker_events_total", 0) >= len(events))
    finally:
        again.stop()
    assert metrics["fusionrec_worker_events_total"] == len(events)  # all new again: state was rebuilt from zero
    store = ProfileStore(client, worker_settings.redis.keys)
    expected = expected_counts(events)
    assert {p.user_id: Counter(p.counts) for p in store.get_many(sorted(expected))} == expected
