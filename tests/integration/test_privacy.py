"""Privacy on the real broker and Redis: with a pseudonym key, no raw user id is stored or published anywhere."""

from __future__ import annotations

import base64
import time
from collections import Counter
from itertools import pairwise

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


def snapshot_bytes(client: redis.Redis, conf) -> list[bytes]:
    """Every field of every partition snapshot of the events topic."""
    out = []
    for key in client.scan_iter(match=conf.redis.keys.snapshots(conf.topic.events)):
        out += list(client.hgetall(key).values())
    return out


def test_forget_removes_the_user_and_stays_forgotten_after_a_restart(worker_settings, tmp_path):
    import subprocess
    import sys

    from fusionrec.contracts.control import control_record

    conf = worker_settings.replace(privacy_user_key=KEY)
    now = int(time.time() * 1000)
    events = raw_ids(make_events(1500, seed=22, start_ms=now - 60_000))
    gone = max(expected_counts(events).items(), key=lambda kv: sum(kv[1].values()))[0]  # the busiest user
    hidden = pseudonym(KEY.encode(), gone)
    with EventProducer(conf) as producer:
        for event in events:
            producer.send(event)
        producer.send_raw(b"someone-else", control_record(gone))  # keyed wrong: a dead letter, not a request
    total = len(events) + 1

    first = WorkerProcess(conf, tmp_path, "first")
    client = redis.Redis.from_url(conf.redis.url)
    try:
        first.wait_for(  # this user's own list, not just any: under load the ranker reaches them later
            lambda m: (
                handled(m) >= total
                and m.get("fusionrec_recommendations_published_total", 0) > 0
                and all_snapshotted(conf, total)
                and client.exists(conf.redis.keys.recommendation(hidden))
            )
        )
        store = ProfileStore(client, conf.redis.keys)
        assert store.get(hidden).counts and client.exists(conf.redis.keys.recommendation(hidden))
        assert any(hidden.encode() in blob for blob in snapshot_bytes(client, conf))  # the user is in the models

        out = subprocess.run(
            [sys.executable, "-m", "fusionrec.apps.cli", "forget", gone, "--yes"],
            env=first.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert f"forget {gone}: requested (partition" in out.stdout
        later = raw_ids(make_events(200, seed=23, start_ms=now - 30_000))
        later = [e for e in later if e.user_id != gone]
        with EventProducer(conf) as producer:
            for event in later:
                producer.send(event)
        total += 1 + len(later)
        metrics = first.wait_for(
            lambda m: (
                m.get("fusionrec_worker_forgotten_users_total", 0) >= 1
                and handled(m) >= total - 1
                and all_snapshotted(conf, total)
            )
        )
    finally:
        first.stop()
    assert metrics["fusionrec_worker_forgotten_users_total"] == 1
    assert metrics["fusionrec_worker_dead_letter_total"] == 1  # the wrongly keyed request

    def assert_forgotten():
        assert store.get(hidden).is_new
        assert not client.exists(conf.redis.keys.recommendation(hidden))
        assert len(store.seen(hidden)) == 0  # the dedup window remembers no event of theirs
        assert not any(hidden.encode() in blob for blob in snapshot_bytes(client, conf))

    assert_forgotten()
    expected = expected_counts(events + later)
    del expected[gone]
    survivors = sorted(expected)
    assert [Counter(p.counts) for p in store.get_many([pseudonym(KEY.encode(), u) for u in survivors])] == [
        expected[u] for u in survivors
    ]
    recs = [(k, v) for _p, _o, k, v in read_topic(conf, conf.topic.recommendations, idle_timeout=3)]
    theirs = [v for k, v in recs if k == hidden.encode()]
    assert theirs and theirs[-1] is None  # a tombstone after their last list, for the compacted topic

    # a restart restores the snapshots written after the request: the user stays forgotten
    second = WorkerProcess(conf, tmp_path, "second")
    try:
        with EventProducer(conf) as producer:
            producer.send(later[0]._replace(event_id="after-restart"))
        second.wait_for(lambda m: m.get("fusionrec_worker_events_total", 0) >= 1 and all_snapshotted(conf, total + 1))
    finally:
        second.stop()
    assert_forgotten()
    log = (tmp_path / "first.log").read_text()
    assert f"forgot user {hidden}" in log and gone not in log


def test_a_forget_read_again_from_an_older_snapshot_forgets_again(worker_settings):
    """A restart from a snapshot older than the request (a crash) re-reads the user's old records and the request:
    the profile is not rebuilt meanwhile, and the models end as the first run left them."""
    from fusionrec.contracts.control import control_record
    from fusionrec.contracts.privacy import Pseudonymiser
    from fusionrec.streams.apply import BatchApplier
    from fusionrec.streams.batching import Record, RecordBatch
    from fusionrec.streams.forget import Forgetter
    from fusionrec.streams.state import PartitionRegistry, SnapshotStore

    conf = worker_settings.replace(privacy_user_key=KEY)
    client = redis.Redis.from_url(conf.redis.url)
    now = int(time.time() * 1000)
    events = raw_ids(make_events(600, seed=24, start_ms=now - 60_000))
    gone = events[0].user_id
    after = events[1]._replace(event_id="after", user_id=gone, session_id=None, item_id="item-after", ts=now)
    records = [Record(n, e.key, e.to_json(), e.ts) for n, e in enumerate(events[:400])]
    records.append(Record(400, gone.encode(), control_record(gone), now))
    records += [Record(401 + n, e.key, e.to_json(), e.ts) for n, e in enumerate(events[400:])]
    records.append(Record(len(records), after.key, after.to_json(), now))
    hidden = pseudonym(KEY.encode(), gone)

    def run(topic: str, cuts: list[int]):
        partitions = PartitionRegistry(SnapshotStore(client, conf, topic))  # no snapshot: from the start
        applier = BatchApplier(
            partitions,
            ProfileStore.from_settings(conf, client),
            conf.event,
            pseudonyms=Pseudonymiser.from_settings(conf),
            forgetter=Forgetter(client, conf.redis.keys, conf.dedup),
        )
        outcomes = [applier.apply(RecordBatch(conf.topic.events, 0, records[a:b])) for a, b in pairwise(cuts)]
        return partitions.state(0), outcomes

    first, outcomes = run("first", [0, 250, 450, len(records)])
    assert sum(o.forgotten for o in outcomes) == 1 and not any(o.dead_letters for o in outcomes)
    store = ProfileStore.from_settings(conf, client)
    profile = store.get(hidden)
    assert profile.counts == {after.type: 1} and profile.recent_items == ["item-after"]  # a new history

    again, outcomes = run("again", [0, 100, 401, len(records)])  # the same records, read again from offset 0
    assert sum(o.applied for o in outcomes) == 0 and sum(o.redelivered for o in outcomes) == len(records) - 1
    assert store.get(hidden) == profile  # the old records did not write the profile again
    for name, model in first.models.items():
        assert model.candidates(hidden, 10) == again.models[name].candidates(hidden, 10), name
    assert [item for item, _ in first.models["recent"].candidates(hidden, 10)] == ["item-after"]
