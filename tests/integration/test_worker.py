"""The Faust worker end to end on the real broker and Redis: exact profiles, exact dead letters, crash recovery."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter

import orjson
import pytest
import redis

from consumers.reader import read_topic
from fusionrec.events import Event
from fusionrec.profiles import ProfileStore
from fusionrec.stack import free_port
from fusionrec.topics import ensure_topics
from producers.producer import EventProducer

TYPES = ["view"] * 6 + ["add_to_cart", "favourite", "purchase", "remove_from_cart"]


def make_events(n: int, seed: int, start_ms: int) -> list[Event]:
    rng = random.Random(seed)
    return [Event(f"ev-{seed}-{i}", f"user-{rng.randrange(300)}", f"item-{rng.randrange(500)}", rng.choice(TYPES),
                  start_ms + i, category_id=f"cat-{rng.randrange(20)}") for i in range(n)]


MALFORMED = [b"not json", b'{"event_id": "x", "type": "view"}', b"\xff\xfe", b"[]",
             orjson.dumps({"event_id": "y", "user_id": "u", "item_id": "i", "type": "click", "ts": 1})]


class WorkerProcess:
    def __init__(self, settings, tmp_path, name: str):
        self.metrics_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FUSIONREC_")} | {
            "FUSIONREC_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "FUSIONREC_REDIS_URL": settings.redis_url,
            "FUSIONREC_REDIS_PREFIX": settings.redis_prefix,
            "FUSIONREC_TOPIC_EVENTS": settings.topic_events,
            "FUSIONREC_TOPIC_DEAD_LETTER": settings.topic_dead_letter,
            "FUSIONREC_WORKER_GROUP": settings.worker_group,
            "FUSIONREC_STATE_DIR": str(tmp_path / name),
            "FUSIONREC_METRICS_PORT": str(self.metrics_port),
            "FUSIONREC_SNAPSHOT_INTERVAL_S": "0.5",
            "FUSIONREC_WORKER_WEB_PORT": str(free_port()),
        }
        self.log = open(tmp_path / f"{name}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "fusionrec.cli", "worker"], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def metrics(self) -> dict[str, float]:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).read().decode()
        except OSError:
            return {}
        out: Counter = Counter()
        for line in text.splitlines():
            if line.startswith("fusionrec_worker_") and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name.split("{")[0]] += float(value)
        return out

    def wait_for(self, predicate, timeout: float = 90.0) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker exited with {self.proc.returncode}"
            metrics = self.metrics()
            if metrics and predicate(metrics):
                return metrics
            time.sleep(0.2)
        raise AssertionError(f"worker did not get there in {timeout}s: {self.metrics()}")

    def stop(self, sig=signal.SIGTERM, grace: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def handled(metrics) -> float:
    return (metrics.get("fusionrec_worker_events_total", 0) + metrics.get("fusionrec_worker_duplicates_skipped_total", 0)
            + metrics.get("fusionrec_worker_dead_letter_total", 0))


def expected_counts(events: list[Event]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for event in events:
        out.setdefault(event.user_id, Counter())[event.type] += 1
    return out


@pytest.fixture
def worker_settings(settings):
    tag = uuid.uuid4().hex[:8]
    conf = settings.model_copy(update={"redis_prefix": f"w{tag}:", "worker_group": f"g-{tag}"})
    ensure_topics(conf)
    return conf


def send(settings, events, raw=(), duplicates=()):
    with EventProducer(settings) as producer:
        for event in events:
            producer.send(event)
        for event in duplicates:
            producer.send(event)
        for value in raw:
            producer.send_raw(b"bad-key", value)
    assert producer.stats.delivered == len(events) + len(raw) + len(duplicates)


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

    store = ProfileStore(redis.Redis.from_url(worker_settings.redis_url), prefix=worker_settings.redis_prefix)
    expected = expected_counts(events)
    profiles = store.get_many(sorted(expected))
    assert {p.user_id: Counter(p.counts) for p in profiles} == expected

    letters = [orjson.loads(v) for _p, _o, _k, v in read_topic(worker_settings, worker_settings.topic_dead_letter,
                                                               idle_timeout=3)]
    assert len(letters) == len(MALFORMED)
    import base64

    assert sorted(base64.b64decode(r["original_b64"]) for r in letters) == sorted(MALFORMED)
    assert all(r["reasons"] and r["source"]["topic"] == worker_settings.topic_events for r in letters)
    codes = Counter(r["reasons"][0]["code"] for r in letters)
    assert codes == Counter({"not_json": 1, "missing_field": 1, "bad_encoding": 1, "not_an_object": 1,
                             "unknown_type": 1})


def model_fingerprint(settings) -> dict:
    """What the models would recommend, per partition snapshot: comparable across runs."""
    from streams.state import SnapshotStore

    client = redis.Redis.from_url(settings.redis_url)
    out = {}
    for state in SnapshotStore(client, settings, settings.topic_events).load_all():
        users = sorted({f"user-{i}" for i in range(0, 300, 7)})
        out[state.partition] = (state.offset, {
            name: [model.candidates(user, 5) for user in users] for name, model in sorted(state.models.items())
        })
    return out


def test_kill_9_mid_stream_then_restart_matches_an_uninterrupted_run(worker_settings, tmp_path):
    now = int(time.time() * 1000)
    first, second = make_events(4000, seed=2, start_ms=now - 120_000), make_events(4000, seed=3, start_ms=now - 60_000)
    send(worker_settings, first)

    crashed = WorkerProcess(worker_settings, tmp_path, "crashed")
    crashed.wait_for(lambda m: m.get("fusionrec_worker_snapshots_total", 0) >= 1
                     and m.get("fusionrec_worker_events_total", 0) >= len(first))
    send(worker_settings, second)
    crashed.wait_for(lambda m: m.get("fusionrec_worker_events_total", 0) > len(first))
    crashed.stop(signal.SIGKILL)

    restarted = WorkerProcess(worker_settings, tmp_path, "restarted")
    try:
        metrics = restarted.wait_for(
            lambda m: m.get("fusionrec_worker_events_total", 0) + m.get("fusionrec_worker_redelivered_total", 0)
            >= 1 and _all_snapshotted(worker_settings, len(first) + len(second)))
    finally:
        restarted.stop()
    assert metrics.get("fusionrec_worker_duplicates_skipped_total", 0) == 0

    clean = worker_settings.model_copy(update={"redis_prefix": worker_settings.redis_prefix + "clean:",
                                               "worker_group": worker_settings.worker_group + "-clean"})
    reference = WorkerProcess(clean, tmp_path, "reference")
    try:
        reference.wait_for(lambda m: m.get("fusionrec_worker_events_total", 0) >= len(first) + len(second)
                           and _all_snapshotted(clean, len(first) + len(second)))
    finally:
        reference.stop()

    store = ProfileStore(redis.Redis.from_url(worker_settings.redis_url), prefix=worker_settings.redis_prefix)
    clean_store = ProfileStore(redis.Redis.from_url(clean.redis_url), prefix=clean.redis_prefix)
    users = sorted(expected_counts(first + second))
    assert store.get_many(users) == clean_store.get_many(users)
    assert {p.user_id: Counter(p.counts) for p in store.get_many(users)} == expected_counts(first + second)
    assert model_fingerprint(worker_settings) == model_fingerprint(clean)


def _all_snapshotted(settings, total: int) -> bool:
    """True when the partition snapshots together cover ``total`` records (offsets are per partition)."""
    client = redis.Redis.from_url(settings.redis_url)
    keys = list(client.scan_iter(match=f"{settings.redis_prefix}snap:{settings.topic_events}:*"))
    covered = sum(int(client.hget(k, "offset")) + 1 for k in keys)
    client.close()
    return covered >= total


def test_rebuild_replays_everything_from_the_topic(worker_settings, tmp_path):
    events = make_events(1500, seed=5, start_ms=int(time.time() * 1000) - 30_000)
    send(worker_settings, events)
    first = WorkerProcess(worker_settings, tmp_path, "before")
    try:
        first.wait_for(lambda m: m.get("fusionrec_worker_events_total", 0) >= len(events)
                       and _all_snapshotted(worker_settings, len(events)))
    finally:
        first.stop()

    out = subprocess.run([sys.executable, "-m", "fusionrec.cli", "rebuild", "--yes"], env=first.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "deleted" in out.stdout
    client = redis.Redis.from_url(worker_settings.redis_url)
    assert not list(client.scan_iter(match=f"{worker_settings.redis_prefix}*"))

    again = WorkerProcess(worker_settings, tmp_path, "after")
    try:
        metrics = again.wait_for(lambda m: m.get("fusionrec_worker_events_total", 0) >= len(events))
    finally:
        again.stop()
    assert metrics["fusionrec_worker_events_total"] == len(events)  # all new again: state was rebuilt from zero
    store = ProfileStore(client, prefix=worker_settings.redis_prefix)
    expected = expected_counts(events)
    assert {p.user_id: Counter(p.counts) for p in store.get_many(sorted(expected))} == expected
