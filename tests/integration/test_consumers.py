"""The recommendations client and the online evaluator against the real broker and Redis."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
from confluent_kafka import KafkaException, Producer
from prometheus_client import CollectorRegistry

from fusionrec.consumers.client import RecommendationsConsumer, RecommendationStore
from fusionrec.consumers.online_eval_service import run_online_eval
from fusionrec.contracts.events import Event
from fusionrec.contracts.keys import RedisKeys
from fusionrec.contracts.recommendations import Policy, Recommendation, RecommendedItem, encode
from fusionrec.infra.admin import ensure_topics
from fusionrec.infra.stack import free_port
from fusionrec.producers.producer import EventProducer
from tests.integration.examples import run_python_examples

DOCS = Path(__file__).resolve().parents[2] / "docs" / "consumers.md"
INVALID_LIST = b'{"v": 2, "user_id": "u1"}'


def make_rec(user, generated_at, items, sources, segment="returning"):
    return Recommendation(
        user_id=user,
        items=tuple(
            RecommendedItem(item, 0.9 - n / 10, {"cf": 0.5 - n / 10, "popular": 0.4}, "c1")
            for n, item in enumerate(items)
        ),
        sources={name: tuple(ids) for name, ids in sources.items()},
        segment=segment,
        policy=Policy("bandit", "exploit", 0.9, {"cf": 0.6, "popular": 0.4}),
        weights_version=3,
        model_version="test",
        generated_at=generated_at,
        newest_event_ts=generated_at - 5,
    )


def publish(settings, recs, raw=()):
    producer = Producer(settings.producer_config())
    for rec in recs:
        producer.produce(settings.topic.recommendations, encode(rec), rec.user_id.encode())
    for value in raw:
        producer.produce(settings.topic.recommendations, value, b"broken")
    assert producer.flush(30) == 0


@pytest.fixture
def conf(settings):
    ensure_topics(settings)
    return settings


def test_consumer_returns_every_list_and_skips_invalid_records(conf):
    now = int(time.time() * 1000)
    recs = [make_rec(f"u{n}", now + n, [f"i{n}", "i9"], {"cf": [f"i{n}"]}) for n in range(5)]
    publish(conf, recs[:3], raw=[INVALID_LIST, b"not json"])
    publish(conf, recs[3:])
    with RecommendationsConsumer(conf, idle_timeout=3) as consumer:
        got = list(consumer)
        assert consumer.invalid == 2
    assert sorted(got, key=lambda r: r.user_id) == recs  # decoded back to equal objects


def test_consumer_polls_as_a_group_member(conf):
    now = int(time.time() * 1000)
    recs = [make_rec(f"u{n}", now, ["a"], {}) for n in range(3)]
    publish(conf, recs)
    got = []
    with RecommendationsConsumer(conf, group_id=f"g-{uuid.uuid4().hex[:8]}") as consumer:
        deadline = time.monotonic() + 20  # the group join takes a few seconds on Tansu
        while len(got) < 3 and time.monotonic() < deadline:
            got += consumer.poll(0.5)
    assert sorted(got, key=lambda r: r.user_id) == recs


def test_consumer_from_the_end_sees_only_new_lists(conf):
    now = int(time.time() * 1000)
    # One user, one flush: one batch of five, inside which Tansu places the partition's end (4 would replay).
    publish(conf, [make_rec("old", now + n, ["a"], {}) for n in range(5)])
    with RecommendationsConsumer(conf, from_beginning=False, idle_timeout=3) as consumer:
        assert consumer.poll(1.0) == []  # assigned at the end: nothing new yet
        publish(conf, [make_rec("new", now + 10, ["b"], {})])
        assert [rec.user_id for rec in consumer] == ["new"]


def test_a_missing_topic_is_a_clear_error(settings):
    with pytest.raises(KafkaException, match="cannot read topic 't-.*-recs'"):
        RecommendationsConsumer(settings)  # the fixture's topics were never created
    with pytest.raises(KafkaException, match="cannot read topic"):
        run_online_eval(settings, k=5, idle_timeout=1)


# --- online evaluation: a hand-worked stream --------------------------------------------------------------------
# Lists (k=2): ann at t+1000 [a, b, c] (cf: b, c; popular: d); bob at t+2000 [x, y] (cf: x; popular: y).
# Events and their judgements:
#   t+500  ann a view         new, before ann's first list: unserved
#   t+1500 ann b view         new: fused hit (b 2nd), cf hit, popular miss
#   t+1600 ann c view         new: fused miss (c 3rd, cut by k), cf hit, popular miss
#   t+1700 ann b add_to_cart  repeat: fused hit, cf hit, popular miss
#   t+2500 bob y view         new: fused hit, cf miss, popular hit
#   t+2600 bob z impression   not a target
#   plus one record that is not an event (skipped)
# Totals: fused 3/4 (new 2/3, repeat 1/1), cf 3/4 (new 2/3, repeat 1/1), popular 1/4 (new 1/3, repeat 0/1),
# unserved 1; by segment fused returning (ann) 2/3, new (bob) 1/1.
EXPECTED = {
    "fused": (3, 4, {"new": (2, 3), "repeat": (1, 1)}),
    "cf": (3, 4, {"new": (2, 3), "repeat": (1, 1)}),
    "popular": (1, 4, {"new": (1, 3), "repeat": (0, 1)}),
}


def publish_scenario(conf) -> int:
    t = int(time.time() * 1000) - 600_000
    publish(
        conf,
        [
            make_rec("ann", t + 1000, "abc", {"cf": "bc", "popular": "d"}),
            make_rec("bob", t + 2000, "xy", {"cf": "x", "popular": "y"}, segment="new"),
        ],
        raw=[INVALID_LIST],
    )
    events = [
        Event("e1", "ann", "a", "view", t + 500),
        Event("e2", "ann", "b", "view", t + 1500),
        Event("e3", "ann", "c", "view", t + 1600),
        Event("e4", "ann", "b", "add_to_cart", t + 1700),
        Event("e5", "bob", "y", "view", t + 2500),
        Event("e6", "bob", "z", "impression", t + 2600),
    ]
    with EventProducer(conf) as producer:
        producer.send_raw(b"ann", b'{"v": 1, "type": "teleport"}')
        for event in events:
            producer.send(event)
    return len(events)


def judged(summary):
    return {
        variant: (
            cell["hits"],
            cell["targets"],
            {kind: (c["hits"], c["targets"]) for kind, c in cell["by_kind"].items()},
        )
        for variant, cell in summary["variants"].items()
    }


def test_online_eval_counts_the_hits_worked_out_by_hand(conf):
    n_events = publish_scenario(conf)
    registry = CollectorRegistry()
    summary = run_online_eval(conf, k=2, max_events=n_events, idle_timeout=20, grace_ms=300, registry=registry)
    assert judged(summary) == EXPECTED
    assert summary["unserved"] == 1 and summary["targets"] == 4 and summary["lists"] == 2
    assert summary["consumed"] == {"events": 6, "invalid_events": 1, "invalid_lists": 1}
    fused = summary["variants"]["fused"]
    assert fused["hit_rate"] == 0.75
    assert {seg: (c["hits"], c["targets"]) for seg, c in fused["by_segment"].items()} == {
        "new": (1, 1),
        "returning": (2, 3),
    }
    value = registry.get_sample_value
    assert value("fusionrec_online_targets_total", {"variant": "popular", "kind": "new"}) == 3
    assert value("fusionrec_online_hits_total", {"variant": "cf", "kind": "repeat"}) == 1
    assert value("fusionrec_online_unserved_total") == 1
    assert value("fusionrec_online_hit_rate", {"variant": "popular"}) == 0.25


def test_online_eval_serves_metrics_while_running_and_stops_on_request(conf):
    publish_scenario(conf)
    port, stop, result = free_port(), threading.Event(), {}
    runner = threading.Thread(
        target=lambda: result.update(run_online_eval(conf, k=2, metrics_port=port, grace_ms=300, stop=stop))
    )
    runner.start()
    try:
        deadline, text = time.monotonic() + 30, ""
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                text = ""
            if 'fusionrec_online_targets_total{kind="repeat",variant="popular"} 1.0' in text:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        runner.join(30)
    assert 'fusionrec_online_hits_total{kind="new",variant="fused"} 2.0' in text
    assert re.search(r'^fusionrec_online_hit_rate\{variant="cf"\} 0\.75$', text, re.M)
    assert "fusionrec_online_unserved_total 1.0" in text
    assert not runner.is_alive() and judged(result) == EXPECTED
    with pytest.raises(OSError):  # the metrics server is gone
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


# --- Redis serving copy -------------------------------------------------------------------------------------------
def test_store_reads_the_serving_copy_under_the_documented_key(stack):
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(stack.settings.redis.url)
    now = int(time.time() * 1000)
    ann, bob = make_rec("ann", now, ["a", "b"], {"cf": ["a"]}), make_rec("bob", now, ["c"], {})
    try:
        client.set(f"{prefix}rec:{{ann}}", encode(ann))  # the key as documented (user id hash-tagged), spelled out
        client.set(RedisKeys(prefix).recommendation("bob"), encode(bob))
        client.set(RedisKeys(prefix).recommendation("eve"), b"garbage")
        store = RecommendationStore(client, RedisKeys(prefix))
        assert store.get("ann") == ann and store.get("nobody") is None
        assert store.get_many(["bob", "nobody", "ann", "eve"]) == {"bob": bob, "nobody": None, "ann": ann, "eve": None}
        assert store.invalid == 1 and store.get_many([]) == {}
        from_settings = RecommendationStore.from_settings(stack.settings.replace(redis_prefix=prefix))
        assert from_settings.get("bob") == bob
    finally:
        client.delete(*(RedisKeys(prefix).recommendation(user) for user in ("ann", "bob", "eve")))
        client.close()


# --- edges -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("fusionrec.consumers.client", ("faust", "torch", "fusionrec.models")),
        ("fusionrec.consumers.online_eval", ("faust", "torch")),
        ("fusionrec.consumers.online_eval_service", ("faust", "torch")),
    ],
)
def test_the_client_imports_without_the_stream_framework(module, forbidden):
    code = f"import sys, {module}; print(','.join(m for m in {forbidden!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{module} imports {out}"


def test_docs_python_example_runs(conf, stack):
    prefix = f"d{uuid.uuid4().hex[:8]}:"
    rec = make_rec("u42", int(time.time() * 1000), ["i7", "i9"], {"cf": ["i7"]})
    publish(conf, [rec])
    client = redis.Redis.from_url(stack.settings.redis.url)
    client.set(RedisKeys(prefix).recommendation("u42"), encode(rec))
    env = {
        "FUSIONREC_KAFKA_BOOTSTRAP_SERVERS": conf.kafka.bootstrap_servers,
        "FUSIONREC_TOPIC_RECOMMENDATIONS": conf.topic.recommendations,
        "FUSIONREC_REDIS_URL": conf.redis.url,
        "FUSIONREC_REDIS_PREFIX": prefix,
    }
    try:
        output = "".join(run_python_examples(DOCS, env))
        assert "u42 returning ['i7', 'i9'] exploit" in output and "['i7', 'i9']\n" in output
        assert "{'u42': True, 'u7': False}" in output
    finally:
        client.delete(RedisKeys(prefix).recommendation("u42"))
        client.close()
