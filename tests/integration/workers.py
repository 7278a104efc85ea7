"""Helpers for tests that run real worker processes against the session's broker and Redis."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import orjson
import redis

from fusionrec.events import Event
from fusionrec.stack import free_port
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


def send(settings, events, raw=(), duplicates=()):
    with EventProducer(settings) as producer:
        for event in events:
            producer.send(event)
        for event in duplicates:
            producer.send(event)
        for value in raw:
            producer.send_raw(b"bad-key", value)
    assert producer.stats.delivered == len(events) + len(raw) + len(duplicates)


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


def all_snapshotted(settings, total: int) -> bool:
    """True when the partition snapshots together cover ``total`` records (offsets are per partition)."""
    client = redis.Redis.from_url(settings.redis_url)
    keys = list(client.scan_iter(match=f"{settings.redis_prefix}snap:{settings.topic_events}:*"))
    covered = sum(int(client.hget(k, "offset")) + 1 for k in keys)
    client.close()
    return covered >= total
