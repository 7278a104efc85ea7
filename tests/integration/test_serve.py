"""The serving API (`fusionrec serve`) as a shop calls it: a real server process on a loopback port, the session's
real Tansu broker and Redis, httpx as the client."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from fusionrec.apps.serve import hash_key
from fusionrec.apps.serve.child import ServerChild
from fusionrec.contracts.events import Event
from fusionrec.contracts.recommendations import (
    Policy,
    Recommendation,
    RecommendedItem,
    encode,
    encode_message_and_copy,
)
from fusionrec.infra.admin import ensure_topics

KEY = "shop-frontend-key"
REC_ROUTE = "/v1/users/{user_id}/recommendations"


@pytest.fixture(scope="module")
def api_settings(stack):
    tag = uuid.uuid4().hex[:8]
    conf = stack.settings.replace(
        topic_events=f"api-{tag}-events",
        topic_dead_letter=f"api-{tag}-dlq",
        topic_recommendations=f"api-{tag}-recs",
        topic_events_partitions=3,
        topic_recommendations_partitions=3,
        kafka_client_id=f"fr-api-{tag}",
        worker_group=f"fr-api-{tag}",
        redis_prefix=f"api{tag}:",
        api_key_hashes=f"{hash_key('another-key')},{hash_key(KEY)}",
        api_max_body_bytes=4096,
        api_item_side_refresh_s=0.2,
    )
    ensure_topics(conf)
    return conf


@pytest.fixture(scope="module")
def server(api_settings, tmp_path_factory):
    child = ServerChild(api_settings, tmp_path_factory.mktemp("api") / "serve.log")
    try:
        yield child.wait_live()
    finally:
        child.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=20) as http:
        yield http


@pytest.fixture(scope="module")
def db(api_settings):
    client = redis.Redis.from_url(api_settings.redis.url)
    yield client
    client.close()


def stored_list(user_id: str, items: list[tuple[str, float, dict[str, float]]], newest_event_ts: int) -> Recommendation:
    return Recommendation(
        user_id=user_id,
        items=tuple(RecommendedItem(item, score, parts, "c1") for item, score, parts in items),
        sources={"covisit": ("i1", "i3"), "cf": ("i2",)},
        segment="returning",
        policy=Policy("bandit", "exploit", 0.95, {"covisit": 0.6, "cf": 0.4}),
        weights_version=7,
        model_version="fusionrec-test p0@10",
        generated_at=newest_event_ts + 150,
        newest_event_ts=newest_event_ts,
        partition=0,
    )


def wait_until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


# --- reads -------------------------------------------------------------------------------------------------------


def test_the_workers_compact_copy_serves_like_the_full_list(client, db, api_settings):
    newest = int(time.time() * 1000) - 1000
    parts = [("i1", 0.9, {"covisit": 0.6, "cf": 0.3}), ("i2", 0.5, {"cf": 0.5})]
    db.set(api_settings.redis.keys.recommendation("full-form"), encode(stored_list("full-form", parts, newest)))
    _, copy = encode_message_and_copy(stored_list("rows-form", parts, newest).to_dict())
    db.set(api_settings.redis.keys.recommendation("rows-form"), copy)

    full = client.get("/v1/users/full-form/recommendations").json()
    rows = client.get("/v1/users/rows-form/recommendations").json()
    assert rows["fallback"] is False and rows["items"] == full["items"] and len(rows["items"]) == 2
    assert rows["items"][0]["sources"] == ["covisit", "cf"]


def test_recommendations_serve_the_stored_list_with_sources_and_freshness(client, db, api_settings):
    newest = int(time.time() * 1000) - 3000
    rec = stored_list(
        "alice",
        [("i1", 0.9, {"covisit": 0.6, "cf": 0.3}), ("i2", 0.5, {"cf": 0.5}), ("i3", 0.2, {"covisit": 0.2})],
        newest,
    )
    db.set(api_settings.redis.keys.recommendation("alice"), encode(rec))

    body = client.get("/v1/users/alice/recommendations").json()
    assert body["fallback"] is False
    assert [i["item_id"] for i in body["items"]] == ["i1", "i2", "i3"]
    assert body["items"][0] == {
        "item_id": "i1",
        "score": 0.9,
        "category_id": "c1",
        "sources": ["covisit", "cf"],
        "contributions": {"covisit": 0.6, "cf": 0.3},
    }
    assert body["generated_at"] == newest + 150 and body["newest_event_ts"] == newest
    assert 3000 <= body["freshness_ms"] < 3000 + 5000
    assert body["segment"] == "returning" and body["policy"]["action"] == "exploit"

    assert [i["item_id"] for i in client.get("/v1/users/alice/recommendations", params={"k": 2}).json()["items"]] == [
        "i1",
        "i2",
    ]
    # An item the shop marks unavailable leaves the served list within a refresh (about a second).
    db.sadd(api_settings.redis.keys.unavailable, "i2")
    try:
        wait_until(
            lambda: (
                [i["item_id"] for i in client.get("/v1/users/alice/recommendations").json()["items"]] == ["i1", "i3"]
            )
        )
    finally:
        db.srem(api_settings.redis.keys.unavailable, "i2")


def test_bad_k_and_user_id_are_422(client):
    assert client.get("/v1/users/alice/recommendations", params={"k": 0}).status_code == 422
    assert client.get("/v1/users/alice/recommendations", params={"k": 10_001}).status_code == 422
    assert client.get("/v1/users/alice/recommendations", params={"k": "many"}).status_code == 422
    assert client.get(f"/v1/users/{'u' * 129}/recommendations").status_code == 422


def _write_item_side(api_settings, db, *, lamp: bool = True) -> None:
    """The item side snapshot as a worker writes it (the worker's own save), from models trained on a few events:
    mug is bought most (popular), lamp took off in the last minutes (trending), and kettle is co-visited with mug
    three times and with lamp once."""
    from fusionrec.streams.item_side import ItemSideLink
    from fusionrec.streams.state import build_item_side

    now = int(time.time() * 1000)
    day = 86_400_000
    events = [Event(f"m{n}", f"old{n}", "mug", "purchase", now - 3 * day) for n in range(6)]
    events += [Event(f"l{n}", f"new{n}", "lamp", "purchase", now - 60_000 + n) for n in range(2)]
    for n in range(3):
        events.append(Event(f"kv{n}", f"s{n}", "kettle", "view", now - day + 10 * n, session_id=f"x{n}"))
        events.append(Event(f"km{n}", f"s{n}", "mug", "view", now - day + 10 * n + 1, session_id=f"x{n}"))
    if lamp:
        events.append(Event("kv9", "s9", "kettle", "view", now - day + 100, session_id="x9"))
        events.append(Event("kl9", "s9", "lamp", "view", now - day + 101, session_id="x9"))
    events.sort(key=lambda e: e.ts)
    replica = build_item_side(api_settings, api_settings.topic.events_partitions)
    for name in ("popular", "trending", "covisit"):
        replica.models[name].learn_many(events)
    link = ItemSideLink(api_settings, replica, db)
    link.positions = {0: len(events) + (0 if lamp else 1000)}  # what tells the API the snapshot changed
    link.save()


def test_fallback_and_similar_items_come_from_the_workers_item_side(client, db, api_settings):
    no_snapshot = client.get("/v1/items/kettle/similar")
    if no_snapshot.status_code == 503:  # before any snapshot (unless an earlier test wrote one)
        assert "snapshot" in no_snapshot.json()["detail"]
    _write_item_side(api_settings, db)
    body = wait_until(lambda: (b := client.get("/v1/users/nobody-yet/recommendations").json())["items"] and b)
    assert body["fallback"] is True and body["freshness_ms"] is None
    assert body["fallback_source"] == "trending"
    ids = [i["item_id"] for i in body["items"]]
    assert ids[0] == "lamp", ids  # trending first
    assert set(ids) == {"lamp", "mug", "kettle"}
    assert all(i["sources"] in (["trending"], ["popular"]) for i in body["items"])

    similar = client.get("/v1/items/kettle/similar", params={"k": 5}).json()
    assert [i["item_id"] for i in similar["items"]] == ["mug", "lamp"]
    assert similar["items"][0]["score"] > similar["items"][1]["score"] > 0
    assert client.get("/v1/items/never-seen/similar").json()["items"] == []

    db.sadd(api_settings.redis.keys.unavailable, "lamp")
    try:
        wait_until(
            lambda: "lamp" not in [i["item_id"] for i in client.get("/v1/users/nobody/recommendations").json()["items"]]
        )
        assert [i["item_id"] for i in client.get("/v1/items/kettle/similar").json()["items"]] == ["mug"]
    finally:
        db.srem(api_settings.redis.keys.unavailable, "lamp")


def test_neighbours_the_item_side_forgot_are_removed(client, db, api_settings):
    _write_item_side(api_settings, db)
    wait_until(lambda: client.get("/v1/items/lamp/similar").json()["items"])
    _write_item_side(api_settings, db, lamp=False)  # lamp was never co-visited in this one
    wait_until(lambda: client.get("/v1/items/lamp/similar").json()["items"] == [])
    assert [i["item_id"] for i in client.get("/v1/items/kettle/similar").json()["items"]] == ["mug"]
    assert not db.exists(api_settings.redis.keys.similar("lamp"))


# --- rerank ------------------------------------------------------------------------------------------------------


def test_rerank_puts_the_users_items_first_by_score_then_the_rest_in_the_given_order(client, db, api_settings):
    rec = stored_list("bob", [("i1", 0.9, {"covisit": 0.9}), ("i2", 0.5, {"cf": 0.5})], int(time.time() * 1000))
    db.set(api_settings.redis.keys.recommendation("bob"), encode(rec))
    body = client.post("/v1/rerank", json={"user_id": "bob", "items": ["x", "i2", "y", "i1", "x"]}).json()
    assert body["personalised"] is True
    assert [i["item_id"] for i in body["items"]] == ["i1", "i2", "x", "y"]
    first = body["items"][0]
    assert first["on_list"] and first["list_position"] == 1 and first["given_position"] == 3
    assert first["sources"] == ["covisit"] and "covisit 0.90" in first["reason"]
    assert body["items"][2]["reason"].startswith("not on the user's fused list")

    cold = client.post("/v1/rerank", json={"user_id": "carol", "items": ["b", "a"]}).json()
    assert cold["personalised"] is False and [i["item_id"] for i in cold["items"]] == ["b", "a"]

    bad = client.post("/v1/rerank", json={"user_id": "", "items": "nope"})
    assert bad.status_code == 422
    assert {tuple(e["loc"]) for e in bad.json()["detail"]} == {("user_id",), ("items",)}


# --- events ------------------------------------------------------------------------------------------------------


def _read_topic(settings, expected: int, timeout: float = 20.0) -> list[dict]:
    consumer = Consumer(settings.consumer_config(f"{settings.kafka.client_id}-read-{uuid.uuid4().hex[:6]}"))
    topic = settings.topic.events
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(out) < expected:
            for msg in consumer.consume(100, timeout=0.5):
                if msg.error() is None:
                    value = orjson.loads(msg.value())
                    assert msg.key() == value["user_id"].encode()
                    out.append(value)
        time.sleep(0.5)  # anything beyond what was expected shows up too
        out += [orjson.loads(m.value()) for m in consumer.consume(100, timeout=0.5) if m.error() is None]
    finally:
        consumer.close()
    return out


def test_events_are_validated_with_every_reason_and_produced_once_acknowledged(client, api_settings):
    now = int(time.time() * 1000)
    bad = client.post(
        "/v1/events",
        json=[
            {"event_id": "ok-0", "user_id": "u1", "item_id": "i1", "type": "view", "ts": now},
            {"event_id": "bad-1", "user_id": 7, "item_id": "i1", "type": "click", "ts": now},
            {"user_id": "u1", "item_id": "i1", "type": "view", "ts": now // 1000},
        ],
    )
    assert bad.status_code == 422
    invalid = bad.json()["invalid"]
    assert [e["index"] for e in invalid] == [1, 2]
    assert {(r["code"], r["field"]) for r in invalid[0]["reasons"]} == {
        ("wrong_type", "user_id"),
        ("unknown_type", "type"),
    }
    assert {(r["code"], r["field"]) for r in invalid[1]["reasons"]} == {
        ("missing_field", "event_id"),
        ("ts_out_of_range", "ts"),
    }
    assert "none was sent" in bad.json()["detail"]
    assert client.post("/v1/events", content=b"{not json").status_code == 422
    assert client.post("/v1/events", json=[]).status_code == 422

    single = {"event_id": "e-1", "user_id": "u1", "item_id": "sku-1", "type": "add_to_cart", "ts": now, "quantity": 2}
    one = client.post("/v1/events", json=single)
    assert one.status_code == 202, one.text
    assert one.json()["accepted"] == 1 and one.json()["topic"] == api_settings.topic.events
    batch = [
        {"event_id": f"b-{n}", "user_id": f"u{n % 3}", "item_id": f"sku-{n}", "type": "view", "ts": now + n}
        for n in range(5)
    ]
    many = client.post("/v1/events", json=batch)
    assert many.status_code == 202 and many.json()["accepted"] == 5
    assert len(many.json()["offsets"]) == 5

    read = _read_topic(api_settings, 6)
    expected = [Event(**{k: v for k, v in e.items()}).to_dict() for e in [single, *batch]]
    assert sorted(read, key=lambda e: e["event_id"]) == sorted(expected, key=lambda e: e["event_id"])


def test_request_bodies_over_the_limit_are_413(client):
    big = {"user_id": "u", "items": ["x" * 100] * 100}  # ~10 KB against a 4 KB limit
    assert client.post("/v1/rerank", json=big).status_code == 413

    def chunks():  # no Content-Length: refused while streaming
        for _ in range(10):
            yield b" " * 1000

    assert client.post("/v1/events", content=chunks()).status_code == 413


# --- auth, probes, metrics, schema ---------------------------------------------------------------------------------


def test_api_keys_are_required_on_v1_only(server):
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        missing = anonymous.get("/v1/users/alice/recommendations")
        assert missing.status_code == 401 and missing.json()["detail"] == "missing API key"
        assert "WWW-Authenticate" in missing.headers
        wrong = anonymous.get("/v1/users/alice/recommendations", headers={"X-API-Key": KEY + "x"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong API key"
        assert anonymous.post("/v1/events", json={}).status_code == 401
        assert anonymous.post("/v1/rerank", json={}).status_code == 401
        assert anonymous.get("/v1/items/a/similar").status_code == 401
        bearer = anonymous.get("/v1/users/alice/recommendations", headers={"Authorization": f"Bearer {KEY}"})
        assert bearer.status_code == 200
        assert anonymous.get("/v1/users/alice/recommendations", headers={"X-API-Key": "another-key"}).status_code == 200
        assert anonymous.get("/livez").status_code == 200
        assert anonymous.get("/readyz").json() == {"status": "ready"}
        assert anonymous.get("/metrics").status_code == 200
        assert anonymous.get("/openapi.json").status_code == 200


def test_openapi_schema_lists_every_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {REC_ROUTE, "/v1/events", "/v1/rerank", "/v1/items/{item_id}/similar", "/v1/weights"} <= set(paths)
    assert "requestBody" in paths["/v1/rerank"]["post"]


def test_metrics_count_requests_by_route_and_status_with_latency(client):
    client.get("/v1/users/metrics-user/recommendations")
    client.get("/v1/users/metrics-user/recommendations", headers={"X-API-Key": "nope"})
    text = client.get("/metrics").text
    assert f'fusionrec_api_requests_total{{method="GET",route="{REC_ROUTE}",status="200"}}' in text
    assert f'fusionrec_api_requests_total{{method="GET",route="{REC_ROUTE}",status="401"}}' in text
    assert f'fusionrec_api_request_seconds_bucket{{le="0.005",route="{REC_ROUTE}"}}' in text
    assert "fusionrec_api_fallbacks_total" in text


def test_weights_are_read_from_the_workers_keys(client, db, api_settings):
    keys = api_settings.redis.keys
    for partition, w in ((0, 0.2), (1, 0.4)):
        entry = {"weights": {"new": {"trending": w, "cf": 1 - w}}, "version": 3, "rewards": 10}
        db.set(keys.weights(api_settings.topic.events, partition), orjson.dumps(entry))
    body = client.get("/v1/weights").json()
    assert set(body["partitions"]) == {"0", "1"}
    assert body["mean"]["new"]["trending"] == pytest.approx(0.3)


def test_an_api_without_keys_is_open_and_warns(api_settings, tmp_path):
    with ServerChild(api_settings.replace(api_key_hashes=None), tmp_path / "open.log") as open_server:
        assert httpx.get(f"{open_server.url}/v1/users/x/recommendations", timeout=10).status_code == 200
        assert "no API key configured" in open_server.log()


# --- the whole path: events in through the API, a real worker, its lists and item side out ------------------------


def test_events_posted_through_the_api_reach_a_worker_whose_lists_and_neighbours_it_serves(stack, tmp_path):
    from tests.integration.workers import WorkerProcess

    tag = uuid.uuid4().hex[:8]
    conf = stack.settings.replace(
        topic_events=f"e2e-{tag}-events",
        topic_dead_letter=f"e2e-{tag}-dlq",
        topic_recommendations=f"e2e-{tag}-recs",
        topic_events_partitions=2,
        topic_recommendations_partitions=2,
        kafka_client_id=f"fr-e2e-{tag}",
        worker_group=f"fr-e2e-{tag}",
        redis_prefix=f"e2e{tag}:",
        api_item_side_refresh_s=0.2,
    )
    ensure_topics(conf)
    now = int(time.time() * 1000) - 60_000
    events = []
    for n in range(12):  # shoppers who view a kettle view a mug next, in the same session
        for step, item in enumerate(("kettle", "mug")):
            events.append(
                {
                    "event_id": f"s{n}-{step}",
                    "user_id": f"shopper-{n}",
                    "item_id": item,
                    "type": "view",
                    "ts": now + 100 * n + step,
                    "session_id": f"sess-{n}",
                }  # fmt: skip
            )
    worker = WorkerProcess(conf, tmp_path, "w")
    try:
        with ServerChild(conf, tmp_path / "serve.log") as server, httpx.Client(base_url=server.url, timeout=20) as http:
            assert http.get("/v1/users/eve/recommendations").json()["fallback"] is True
            for start in range(0, len(events), 10):
                assert http.post("/v1/events", json=events[start : start + 10]).status_code == 202
            worker.wait_for(lambda m: m["fusionrec_worker_events_total"] >= len(events), timeout=120)
            # The neighbours come from the item side the worker snapshots, once every partition closed the tick.
            similar = wait_until(lambda: http.get("/v1/items/kettle/similar").json().get("items"), timeout=60)
            assert similar[0]["item_id"] == "mug"
            cold = http.get("/v1/users/someone-new/recommendations").json()
            assert cold["fallback"] is True and {i["item_id"] for i in cold["items"]} == {"kettle", "mug"}

            eve = {"event_id": "eve-0", "user_id": "eve", "item_id": "kettle", "type": "view", "ts": now + 5000}
            assert http.post("/v1/events", json=eve).status_code == 202

            def served():
                body = http.get("/v1/users/eve/recommendations").json()
                return None if body["fallback"] else body

            body = wait_until(served, timeout=60)
            mug = next(i for i in body["items"] if i["item_id"] == "mug")  # its place is the fusion's business
            assert "covisit" in mug["sources"] and mug["contributions"]["covisit"] > 0
            assert 0 <= body["freshness_ms"] < 600_000
            reranked = http.post("/v1/rerank", json={"user_id": "eve", "items": ["lamp", "mug"]}).json()
            assert [i["item_id"] for i in reranked["items"]] == ["mug", "lamp"]
    finally:
        worker.stop()


def test_the_fast_read_path_answers_as_the_fastapi_route_does(client, server, db, api_settings):
    rec = stored_list("dora", [("i1", 0.9, {"covisit": 0.6, "cf": 0.3}), ("i2", 0.5, {"cf": 0.5})], 1_700_000_000_000)
    db.set(api_settings.redis.keys.recommendation("dora"), encode(rec))
    fast = client.get("/v1/users/dora/recommendations", params={"k": 1}).json()  # X-API-Key: the fast path
    routed = httpx.get(  # a bearer token and an extra parameter: through FastAPI's route
        f"{server.url}/v1/users/dora/recommendations",
        params={"k": 1, "extra": "x"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert routed.status_code == 200
    assert {**fast, "freshness_ms": 0} == {**routed.json(), "freshness_ms": 0}
    assert fast["items"][0]["item_id"] == "i1" and len(fast["items"]) == 1


def test_an_invalid_stored_list_is_served_as_no_list(client, db, api_settings):
    for value in (b"not json", b'{"v": 2, "items": []}', b'{"v": 1, "items": [{"score": 1}]}'):
        db.set(api_settings.redis.keys.recommendation("mallory"), value)
        response = client.get("/v1/users/mallory/recommendations")
        assert response.status_code == 200 and response.json()["fallback"] is True, value


# --- the page, in a real browser ---------------------------------------------------------------------------------

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--virtual-time-budget=15000",  # the page's script runs and its fetches answer before the DOM is taken
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


def test_the_page_shows_a_users_list_with_reasons_and_the_weights_in_headless_chromium(
    server, db, api_settings, tmp_path
):
    if shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (scripts/setup.sh installs Debian's chromium)")
        pytest.skip("chromium is not installed (scripts/setup.sh installs Debian's chromium)")
    rec = stored_list(
        "page-user", [("i1", 0.9, {"covisit": 0.6, "cf": 0.3}), ("i2", 0.5, {"cf": 0.5})], 1_700_000_000_000
    )
    db.set(api_settings.redis.keys.recommendation("page-user"), encode(rec))
    entry = {"weights": {"returning": {"covisit": 0.55, "cf": 0.45}}, "version": 1, "rewards": 3}
    db.set(api_settings.redis.keys.weights(api_settings.topic.events, 0), orjson.dumps(entry))
    url = f"{server.url}/?user=page-user&key={KEY}"

    dom = _chromium("--dump-dom", url, tmp=tmp_path).stdout
    assert 'data-loaded="yes"' in dom, dom[-2000:]
    assert "covisit 0.60 + cf 0.30" in dom and ">i1<" in dom and ">i2<" in dom
    assert "segment returning" in dom
    assert "covisit" in dom.split('id="weights"')[1] and "0.550" in dom

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "serve-page.png"
    shot.unlink(missing_ok=True)
    _chromium("--window-size=1100,700", f"--screenshot={shot}", url, tmp=tmp_path)
    assert shot.stat().st_size > 5000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
