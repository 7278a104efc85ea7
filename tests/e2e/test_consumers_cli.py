"""`fusionrec tail` and `fusionrec online-eval` as a user runs them, against the session's broker."""

from __future__ import annotations

import json
import re
import time

import pytest
from confluent_kafka import Producer

from fusionrec.contracts.events import Event
from fusionrec.contracts.recommendations import Policy, Recommendation, RecommendedItem, encode
from fusionrec.infra.admin import ensure_topics
from fusionrec.producers.producer import EventProducer
from tests.conftest import isolated_env
from tests.e2e.test_cli import run

# 1_700_000_000_000 ms is 2023-11-14 22:13:20 UTC; the CLI runs with TZ=UTC.
U1 = Recommendation(
    "u1",
    (
        RecommendedItem("i7", 0.83, {"covisit": 0.51, "cf": 0.32}),
        RecommendedItem("i10", 0.5, {"cf": 0.5, "popular": 0.0}),
    ),  # a zero share is not shown
    {"cf": ("i10", "i7"), "covisit": ("i7",)},
    "returning",
    Policy("bandit", "exploit", 0.9, {"cf": 0.5}),
    7,
    "test",
    generated_at=1_700_000_000_123,
    newest_event_ts=1_700_000_000_042,
)
U2 = Recommendation(
    "u2",
    (RecommendedItem("i3", 1.0, {"cf": 1.0}),),
    {"cf": ("i3",)},
    "new",
    Policy("fixed", "boost:cf", 0.05, {"cf": 1.0}),
    7,
    "test",
    generated_at=1_700_000_360_999,
    newest_event_ts=1_700_000_360_500,
)
U1_BLOCK = """\
user u1  segment returning  policy exploit (p=0.90)  reflects event at 22:13:20.042, made 22:13:20.123
  1. i7   0.830  covisit 0.51 + cf 0.32
  2. i10  0.500  cf 0.50
"""
U2_BLOCK = """\
user u2  segment new  policy boost:cf [fixed] (p=0.05)  reflects event at 22:19:20.500, made 22:19:20.999
  1. i3  1.000  cf 1.00
"""


@pytest.fixture
def cli_env(settings, tmp_path):
    ensure_topics(settings)
    return isolated_env(
        tmp_path,
        TZ="UTC",
        FUSIONREC_KAFKA_BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        FUSIONREC_REDIS_URL=settings.redis.url,
        FUSIONREC_TOPIC_RECOMMENDATIONS=settings.topic.recommendations,
        FUSIONREC_TOPIC_EVENTS=settings.topic.events,
    )


def publish(settings, values):
    producer = Producer(settings.producer_config())
    for key, value in values:
        producer.produce(settings.topic.recommendations, value, key)
    assert producer.flush(30) == 0


def test_tail_prints_each_list_with_its_attributions(settings, cli_env):
    publish(settings, [(b"u1", encode(U1)), (b"u2", encode(U2)), (b"x", b'{"v": 99}')])
    out = run(["tail", "--max", "2", "--idle", "3"], cli_env, timeout=60).stdout
    assert U1_BLOCK in out and U2_BLOCK in out
    only = run(["tail", "--user", "u2", "--json", "--idle", "2"], cli_env, timeout=60)
    assert [json.loads(line) for line in only.stdout.splitlines()] == [json.loads(encode(U2))]
    assert "skipped 1 invalid records" in only.stderr
    assert "--from-end" in run(["tail", "--help"], cli_env).stdout


def test_online_eval_prints_a_summary_and_writes_json(settings, cli_env, tmp_path):
    t = int(time.time() * 1000) - 60_000
    rec = Recommendation(
        "ann",
        (RecommendedItem("a", 0.9), RecommendedItem("b", 0.8)),
        {"cf": ("b",)},
        "returning",
        Policy("bandit", "exploit", 1.0),
        1,
        "test",
        t + 1000,
        t + 990,
    )
    publish(settings, [(b"ann", encode(rec))])
    with EventProducer(settings) as producer:
        producer.send(Event("e1", "ann", "b", "view", t + 1500))  # new: on the fused list and cf's
        producer.send(Event("e2", "ann", "c", "purchase", t + 1600))  # new: on neither
        producer.send(Event("e3", "bob", "c", "view", t + 1700))  # new: bob has no list
    path = tmp_path / "online.json"
    out = run(
        ["online-eval", "--k", "2", "--max-events", "3", "--idle", "15", "--grace-ms", "300", "--json-out", str(path)],
        cli_env,
        timeout=60,
    ).stdout
    assert "read 3 events (0 invalid records skipped) and 1 lists: 2 targets judged, 1 unserved" in out
    assert re.search(r"^fused\s+2\s+1\s+0\.500\s+1/2 0\.500\s+0/0 -$", out, re.M), out
    assert re.search(r"^cf\s+2\s+1\s+0\.500\s+1/2 0\.500\s+0/0 -$", out, re.M), out
    assert "HR@2 by segment: fused returning 0.500; cf returning 0.500" in out
    summary = json.loads(path.read_text())
    assert summary["variants"]["cf"]["by_kind"]["new"] == {"targets": 2, "hits": 1, "hit_rate": 0.5}
    assert summary["unserved"] == 1 and summary["consumed"]["events"] == 3
