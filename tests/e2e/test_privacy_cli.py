"""`fusionrec pseudonym|forget|dlq` as an operator runs them, against the session's broker, Redis and a worker."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
import redis

from fusionrec.consumers.reader import read_topic
from fusionrec.contracts.events import Event
from fusionrec.contracts.privacy import pseudonym
from fusionrec.infra.admin import ensure_topics
from fusionrec.producers.producer import EventProducer
from fusionrec.stores.profiles import ProfileStore
from tests.e2e.test_cli import run
from tests.integration.workers import WorkerProcess, handled

KEY = "an e2e test key, long enough to pass"


@pytest.fixture
def conf(settings):
    tag = uuid.uuid4().hex[:8]
    conf = settings.replace(redis_prefix=f"e{tag}:", worker_group=f"g-{tag}", privacy_user_key=KEY)
    ensure_topics(conf)
    return conf


def letters(conf) -> list[dict]:
    return [orjson.loads(v) for _p, _o, _k, v in read_topic(conf, conf.topic.dead_letter, idle_timeout=3)]


def test_dlq_list_show_and_redrive(conf, tmp_path):
    now = int(time.time() * 1000)
    valid = [Event(f"ok-{n}", f"RAWID-{n % 3}", f"i{n}", "view", now - 10_000 + n) for n in range(30)]
    big = Event("big-1", "RAWID-big", "i-big", "purchase", now - 5_000, quantity=50_000).to_dict()  # over the limit
    rejected = [
        (b"RAWID-a", orjson.dumps({"event_id": "c", "user_id": "RAWID-a", "item_id": "i", "type": "click", "ts": now})),
        (b"RAWID-big", orjson.dumps(big)),
        (b"RAWID-b", b'{"user_id": "RAWID-b", oops'),
    ]
    with EventProducer(conf) as producer:
        for event in valid:
            producer.send(event)
        for key, value in rejected:
            producer.send_raw(key, value)

    worker = WorkerProcess(conf, tmp_path, "w1")
    try:
        worker.wait_for(lambda m: handled(m) >= len(valid) + len(rejected))
    finally:
        worker.stop()
    env = worker.env | {"TZ": "UTC"}

    listed = run(["dlq", "list"], env, timeout=60).stdout
    lines = listed.splitlines()
    assert lines[0].split() == ["position", "rejected", "at", "reason", "size", "source"]
    at = {line.split()[3]: line.split()[0] for line in lines[1:4]}  # reason -> position (partitions interleave)
    assert sorted(at.values()) == ["0:0", "0:1", "0:2"] and sorted(at) == ["bad_value", "not_json", "unknown_type"]
    assert "withheld" in lines[1 + sorted(at.values()).index(at["not_json"])]
    assert lines[-1].startswith("3 dead letters: ") and "bad_value 1" in lines[-1]
    assert "RAWID" not in listed
    only = run(["dlq", "list", "--reason", "bad_value", "--limit", "5"], env, timeout=60).stdout
    assert only.splitlines()[-1] == "1 dead letters: bad_value 1"

    shown = run(["dlq", "show", at["bad_value"]], env, timeout=60).stdout
    assert "bad_value (quantity): quantity must be between 1 and 10000" in shown
    assert f'"user_id": "{pseudonym(KEY.encode(), "RAWID-big")}"' in shown and '"quantity": 50000' in shown
    assert "pseudonymised: key, user_id" in shown and "RAWID" not in shown
    missing = run(["dlq", "show", "7"], env, timeout=60, check=False)
    assert missing.returncode == 1 and "no dead letter at 7" in missing.stderr

    dry = run(["dlq", "redrive", "--all", "--dry-run"], env, timeout=60).stdout
    assert f"{at['not_json']}: not re-driven: the letter does not hold the whole record (original)" in dry
    assert dry.splitlines()[-1] == f"would re-drive 2 of 3 to {conf.topic.events}"
    assert len(letters(conf)) == 3  # a dry run sends nothing
    assert run(["dlq", "redrive"], env, timeout=60, check=False).returncode == 2  # nothing selected

    # the limit raised, the oversized purchase re-driven is applied; the unknown type comes back as a dead letter
    raised = conf.replace(event_max_quantity=100_000)
    worker = WorkerProcess(raised, tmp_path, "w2")
    try:
        env2 = worker.env | {"TZ": "UTC"}
        out = run(["dlq", "redrive", at["bad_value"], at["unknown_type"], "--yes"], env2, timeout=60).stdout
        assert out.splitlines()[-1] == f"re-drove 2 of 2 to {conf.topic.events}"
        metrics = worker.wait_for(
            lambda m: (
                m.get("fusionrec_worker_events_total", 0) >= 1 and m.get("fusionrec_worker_dead_letter_total", 0) >= 1
            )
        )
    finally:
        worker.stop()
    assert metrics["fusionrec_worker_events_total"] == 1 and metrics["fusionrec_worker_dead_letter_total"] == 1
    store = ProfileStore(redis.Redis.from_url(conf.redis.url), conf.redis.keys)
    assert store.get(pseudonym(KEY.encode(), "RAWID-big")).counts == {"purchase": 1}  # hashed once, not twice
    after = letters(conf)
    assert len(after) == 4 and after[-1]["reasons"][0]["code"] == "unknown_type"
    assert after[-1]["pseudonymised"] == ["re-driven"] and b"RAWID" not in orjson.dumps(after[-1])


def test_pseudonym_and_forget(conf, tmp_path):
    now = int(time.time() * 1000)
    events = [Event(f"f-{n}", "RAWID-shopper", f"i{n}", "view", now - 10_000 + n) for n in range(5)]
    with EventProducer(conf) as producer:
        for event in events:
            producer.send(event)
    worker = WorkerProcess(conf, tmp_path, "w")
    try:
        worker.wait_for(lambda m: m.get("fusionrec_worker_events_total", 0) >= len(events))
        env = worker.env
        out = run(["pseudonym", "RAWID-shopper", "other"], env, timeout=60).stdout.split()
        assert out == [pseudonym(KEY.encode(), "RAWID-shopper"), pseudonym(KEY.encode(), "other")]
        store = ProfileStore(redis.Redis.from_url(conf.redis.url), conf.redis.keys)
        assert store.get(out[0]).counts == {"view": 5}
        asked = run(["forget", "RAWID-shopper"], env, timeout=60, check=False)
        assert asked.returncode == 1 and "Aborted" in asked.stdout + asked.stderr  # it asks first
        done = run(["forget", "RAWID-shopper", "--yes", "--wait", "30"], env, timeout=60).stdout.splitlines()
        assert done[0].startswith("forget RAWID-shopper: requested (partition ")
        assert done[1] == "forget RAWID-shopper: done"  # the worker carried it out before the command returned
        assert store.get(out[0]).is_new
        assert worker.metrics()["fusionrec_worker_forgotten_users_total"] == 1
    finally:
        worker.stop()
    assert store.get(out[0]).is_new
    plain = {k: v for k, v in env.items() if k != "FUSIONREC_PRIVACY_USER_KEY"}
    unkeyed = run(["pseudonym", "u1"], plain, timeout=60)
    assert unkeyed.stdout.strip() == "u1" and "not set" in unkeyed.stderr
