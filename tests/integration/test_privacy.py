"""Privacy on the real broker and Redis: with a pseudonym key, no raw user id is stored or published anywhere."""

from __future__ import annotations

import base64
import time
from collections import Counter

import orjson
import redis

from fusionrec.consumers.client import RecommendationStore
from fusionrec.consumers.reader import read_topic
from fusionrec.contracts.privacy import pseudonym
from fusionrec.producers.producer import EventProducer
from fusionrec.stores.profiles import ProfileStore
from tests.integration.workers import WorkerProcess, all_snapshotted, expected_counts, handled, make_events

KEY = "a test key that is long enough, 32+"
MARK = b"RAWID"  # every raw user id of these tests contains it


def raw_ids(events):
    return [e._replace(user_id=f"RAWID-{e.user_id}", session_id=f"RAWID-s-{e.user_id}") for e in events]


#: Rejected records that name raw users: unknown type, wrong key, unparsable, a misnamed field.
MALFORMED = [
    (b"RAWID-m1", orjson.dumps({"event_id": "m1", "user_id": "RAWID-m1", "item_id": "i", "type": "click", "ts": 1})),
    (
        b"RAWID-m2",
        orjson.dumps(
            {"event_id": "m2", "user_id": "RAWID-other", "item_id": "i", "type": "view", "ts": 1_700_000_000_000}
        ),
    ),
    (b"RAWID-m3", b'{"event_id": "m3", "user_id": "RAWID-m3", "item_'),
    (b"RAWID-m4", orjson.dumps({"event_id": "m4", "userId": "RAWID-m4", "item_id": "i", "type": "view"})),
]


def redis_dump(client: redis.Redis, prefix: str) -> list[bytes]:
    """Every key under ``prefix`` and every value it holds, as bytes."""
    out = []
    for key in client.scan_iter(match=f"{prefix}*"):
        out.append(key)
        kind = client.type(key)
        if kind == b"string":
            out.append(client.get(key))
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                out += [field, value]
        elif kind == b"set":
            out += list(client.smembers(key))
        else:
            raise AssertionError(f"unexpected Redis type {kind!r} at {key!r}")
    return out


def topic_dump(settings, topic: str) -> tuple[int, list[bytes]]:
    """Every key and value of ``topic``, with the base64 payloads of dead letters decoded."""
    records, out = 0, []
    for _p, _o, key, value in read_topic(settings, topic, idle_timeout=3):
        records += 1
        out += [key or b"", value or b""]
        if value and value.startswith(b"{") and b"_b64" in value:
            for field in ("original_b64", "key_b64"):
                encoded = orjson.loads(value).get(field)
                if encoded:
                    out.append(base64.b64decode(encoded))
    return records, out


def test_with_a_key_no_raw_user_id_is_stored_or_published(worker_settings, tmp_path):
    conf = worker_settings.replace(privacy_user_key=KEY)
    now = int(time.time() * 1000)
    events = raw_ids(make_events(2000, seed=21, start_ms=now - 60_000))
    with EventProducer(conf) as producer:
        for event in events:
            producer.send(event)
        for key, value in MALFORMED:
            producer.send_raw(key, value)

    worker = WorkerProcess(conf, tmp_path, "w")
    try:
        metrics = worker.wait_for(
            lambda m: (
                handled(m) >= len(events) + len(MALFORMED)
                and m.get("fusionrec_recommendations_published_total", 0) >= len({e.user_id for e in events})
                and all_snapshotted(conf, len(events) + len(MALFORMED))
            )
        )
    finally:
        worker.stop()
    assert metrics["fusionrec_worker_events_total"] == len(events)
    assert metrics["fusionrec_worker_dead_letter_total"] == len(MALFORMED)

    # the worker kept everything, under pseudonyms
    client = redis.Redis.from_url(conf.redis.url)
    store = ProfileStore(client, conf.redis.keys)
    expected = expected_counts(events)
    users = sorted(expected)
    profiles = store.get_many([pseudonym(KEY.encode(), u) for u in users])
    assert [Counter(p.counts) for p in profiles] == [expected[u] for u in users]
    lists = RecommendationStore.from_settings(conf).get_many(users)  # the shop reads by raw id, with the key
    assert all(rec is not None and rec.items for rec in lists.values())
    assert {rec.user_id for rec in lists.values()} == {pseudonym(KEY.encode(), u) for u in users}

    # ... and no raw id anywhere
    stored = redis_dump(client, conf.redis.prefix)
    assert len(stored) > 2 * len(users)
    assert not [v for v in stored if MARK in v]
    someone = pseudonym(KEY.encode(), users[0]).encode()
    assert any(someone in v for v in stored)  # the scan reads where users are: it would see a raw id there
    seen = {}
    for topic, holds in (
        (conf.topic.recommendations, someone),
        (conf.item_side_topic, None),  # items only
        (conf.topic.dead_letter, pseudonym(KEY.encode(), "RAWID-m1").encode()),
    ):
        records, dump = topic_dump(conf, topic)
        seen[topic] = records
        assert not [v for v in dump if MARK in v], topic
        assert holds is None or any(holds in v for v in dump), topic
    assert seen[conf.topic.dead_letter] == len(MALFORMED)
    assert seen[conf.topic.recommendations] >= len(users) and seen[conf.item_side_topic] > 0
    log = (tmp_path / "w.log").read_bytes()
    assert MARK not in log and not [name for name in metrics if MARK.decode() in name]  # nor in a metric's labels

    letters = [orjson.loads(v) for _p, _o, _k, v in read_topic(conf, conf.topic.dead_letter, idle_timeout=3)]
    codes = Counter(letter["reasons"][0]["code"] for letter in letters)
    assert codes == Counter({"unknown_type": 1, "key_mismatch": 1, "not_json": 1, "missing_field": 1})
    assert sum(letter.get("withheld") == ["original"] for letter in letters) == 1  # the unparsable one
