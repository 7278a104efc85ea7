"""The serving API (``fusionrec serve``): the workers' lists over HTTP, events in, reranking, similar items.

Every read is one Redis round trip (``GET {prefix}rec:{user_id}``) plus work in memory: the set of unavailable
items and the item side (fallback list, co-visitation) are refreshed in the background, never per request. Routes,
auth, limits and the fallback are described in docs/serving.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from redis.exceptions import RedisError

from fusionrec import __version__
from fusionrec.apps.serve.events import DeliveryError, EventSender, validate_batch
from fusionrec.apps.serve.http import ApiKeyCheck, MetricsMiddleware, read_body
from fusionrec.apps.serve.item_side import ItemSideCache
from fusionrec.apps.serve.metrics import ApiMetrics
from fusionrec.apps.serve.redis_gets import PipelinedGets
from fusionrec.apps.serve.schemas import (
    EventsAccepted,
    EventsRejected,
    Recommendations,
    Reranked,
    RerankRequest,
    Similar,
    Weights,
)
from fusionrec.contracts.events import MAX_ID_LENGTH
from fusionrec.contracts.privacy import Pseudonymiser
from fusionrec.contracts.recommendations import (
    FORMAT_VERSION,
    Recommendation,
    RecommendationFormatError,
    decode,
    item_fields,
)
from fusionrec.contracts.settings import Settings
from fusionrec.stores.client import connect_async

__all__ = ["Serving", "create_app"]

log = logging.getLogger("fusionrec.serve")

#: How often the set of unavailable items is re-read from Redis.
UNAVAILABLE_REFRESH_S = 1.0
#: Longest a request waits for Redis before answering 503.
REDIS_TIMEOUT_S = 2.0
#: Longest one background refresh (unavailable items, the item side) may take before it is retried.
BACKGROUND_TIMEOUT_S = 60.0


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Serving:
    """What the handlers share: the settings, the Redis client, the producer and the caches."""

    settings: Settings
    metrics: ApiMetrics
    redis: aioredis.Redis
    item_side: ItemSideCache
    sender: EventSender | None = None
    gets: PipelinedGets | None = None
    unavailable: frozenset[str] = frozenset()
    tasks: list[asyncio.Task] = field(default_factory=list)
    #: With FUSIONREC_PRIVACY_USER_KEY the lists are stored under pseudonyms: the shop keeps asking by its raw ids.
    pseudonyms: Pseudonymiser = field(default_factory=lambda: Pseudonymiser(None))

    def list_key(self, user_id: str) -> str:
        return self.settings.redis.keys.recommendation(self.pseudonyms.user(user_id))

    @classmethod
    def connect(cls, settings: Settings, metrics: ApiMetrics) -> Serving:
        client = connect_async(
            settings.redis,
            # No socket_timeout: redis-py would wrap every send in asyncio.wait_for, a new task per command.
            # Requests bound their reads with asyncio.timeout (REDIS_TIMEOUT_S) instead.
            socket_connect_timeout=REDIS_TIMEOUT_S,
            health_check_interval=30,
        )
        return cls(
            settings,
            metrics,
            client,
            ItemSideCache(client, settings),
            EventSender(settings),
            # one connection to one node: on Redis Cluster the lists are spread over the nodes, redis-py routes them
            None if settings.redis.cluster else PipelinedGets(settings.redis, REDIS_TIMEOUT_S),
            pseudonyms=Pseudonymiser.from_settings(settings),
        )

    async def _every(self, seconds: float, what: str, step: Any) -> None:
        failing = False
        while True:
            try:
                async with asyncio.timeout(BACKGROUND_TIMEOUT_S):  # the client has no socket timeout
                    await step()
                if failing:
                    log.info("%s: working again", what)
                failing = False
            except Exception as exc:  # noqa: BLE001 - a background refresh logs and retries; requests go on
                if not failing:
                    log.warning("%s failed (retrying every %g s): %s", what, seconds, exc)
                failing = True
            await asyncio.sleep(seconds)

    async def _read_unavailable(self) -> None:
        members = await self.redis.smembers(self.settings.redis.keys.unavailable)
        self.unavailable = frozenset(m.decode() for m in members)

    async def _read_item_side(self) -> None:
        if await self.item_side.refresh():
            self.metrics.item_side_age.set(self.item_side.view.loaded_at)

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(
                self._every(UNAVAILABLE_REFRESH_S, "reading unavailable items", self._read_unavailable)
            ),
            asyncio.create_task(
                self._every(self.settings.api.item_side_refresh_s, "loading the item side", self._read_item_side)
            ),
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with suppress(asyncio.CancelledError):
                await task
        if self.sender is not None:
            await asyncio.to_thread(self.sender.close)
        if self.gets is not None:
            self.gets.close()
        self.item_side.close()
        await self.redis.aclose()

    async def get(self, key: str) -> bytes | None:
        """One GET over the pipelined connection, bounded by REDIS_TIMEOUT_S (a RedisError then: 503)."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                if self.gets is None:
                    return await self.redis.get(key)
                return await self.gets.get(key)
        except TimeoutError:
            raise RedisError(f"no answer within {REDIS_TIMEOUT_S:g} s") from None

    async def read_list(self, user_id: str) -> Recommendation | None:
        """The user's stored list, decoded by the contract (None: no list, or an invalid one, logged)."""
        raw = await self.get(self.list_key(user_id))
        if raw is None:
            return None
        try:
            return decode(raw)
        except RecommendationFormatError as exc:
            log.warning("stored list of user %r is invalid, serving the fallback: %s", user_id, exc)
            return None

    async def recommendations(self, user_id: str, k: int) -> dict[str, Any]:
        """The body of GET recommendations: the stored list cut to ``k`` available items, or the fallback.

        The hot path: the stored JSON is read as plain dicts (a third of the cost of the contract's typed
        :func:`decode`); a value that does not have the version-1 shape goes through :func:`decode`, which says
        what is wrong, and is served as no list.
        """
        raw = await self.get(self.list_key(user_id))
        data = None
        if raw is not None:
            data = orjson.loads(raw) if raw[:1] == b"{" else None
            if not (type(data) is dict and data.get("v") == FORMAT_VERSION and type(data.get("items")) is list):
                data = None
                if self.read_invalid(user_id, raw) is not None:
                    data = orjson.loads(raw)
        if data is not None:
            try:
                return self._listed(user_id, data, k)
            except (KeyError, TypeError, ValueError, AttributeError):
                self.read_invalid(user_id, raw)
        return self._fallback(user_id, k)

    def read_invalid(self, user_id: str, raw: bytes) -> Recommendation | None:
        try:
            return decode(raw)
        except RecommendationFormatError as exc:
            log.warning("stored list of user %r is invalid, serving the fallback: %s", user_id, exc)
            return None

    def _listed(self, user_id: str, data: dict[str, Any], k: int) -> dict[str, Any]:
        unavailable = self.unavailable
        items = []
        for item in data["items"]:
            item_id, score, category_id, parts = item_fields(item)  # the compact copy's row, or an older object
            if item_id in unavailable:
                continue
            parts = parts or {}
            items.append(
                {
                    "item_id": item_id,
                    "score": float(score),
                    "category_id": category_id,
                    "sources": [s for s, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v > 0],
                    "contributions": parts,
                }
            )
            if len(items) == k:
                break
        policy = data["policy"]
        newest = int(data["newest_event_ts"])
        return {
            "user_id": user_id,
            "fallback": False,
            "fallback_source": None,
            "items": items,
            "generated_at": int(data["generated_at"]),
            "newest_event_ts": newest,
            "freshness_ms": _now_ms() - newest,
            "segment": data["segment"],
            "ranker": data.get("ranker", "bandit"),
            "policy": {"arm": policy["arm"], "action": policy["action"], "propensity": policy["propensity"]},
            "model_version": data["model_version"],
        }

    def _fallback(self, user_id: str, k: int) -> dict[str, Any]:
        self.metrics.fallbacks.inc()
        view = self.item_side.view
        unavailable = self.unavailable
        items = []
        for item_id, score, source in view.fallback:
            if item_id not in unavailable:
                items.append(
                    {
                        "item_id": item_id,
                        "score": score,
                        "category_id": None,
                        "sources": [source],
                        "contributions": {source: score},
                    }
                )
                if len(items) == k:
                    break
        return {
            "user_id": user_id,
            "fallback": True,
            "fallback_source": items[0]["sources"][0] if items else None,
            "items": items,
            "generated_at": int(view.loaded_at * 1000) if view.loaded_at else None,
            "newest_event_ts": None,
            "freshness_ms": None,
            "segment": None,
            "ranker": None,
            "policy": None,
            "model_version": None,
        }


def create_app(settings: Settings, metrics: ApiMetrics | None = None) -> MetricsMiddleware:
    """The ASGI app: FastAPI's routes inside the metrics and size-limit middleware."""
    from fusionrec.apps.serve.page import PAGE

    metrics = metrics or ApiMetrics()
    api = settings.api
    holder: dict[str, Serving] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not api.hashes:
            log.warning(
                "no API key configured (FUSIONREC_API_KEY_HASHES): /v1/* is open to anyone who can reach %s:%s",
                api.host,
                api.port,
            )
        serving = Serving.connect(settings, metrics)
        serving.start()
        holder["s"] = serving
        try:
            yield
        finally:
            await serving.stop()

    app = FastAPI(
        title="fusionrec serving API",
        version=__version__,
        description="Fused real-time recommendations, events in, reranking and similar items (docs/serving.md).",
        lifespan=lifespan,
    )
    needs_key = [Depends(ApiKeyCheck(api.hashes))]
    user_id_path = Path(min_length=1, max_length=MAX_ID_LENGTH)
    k_query = Query(None, ge=1, le=api.max_k, description=f"Items wanted (default {settings.ranker.k}).")
    default_k = settings.ranker.k

    @app.exception_handler(RedisError)
    async def redis_down(_: Request, exc: RedisError) -> Response:
        log.warning("Redis: %s", exc)
        return _json({"detail": f"Redis unavailable: {exc}"}, 503, {"Retry-After": "1"})

    @app.get(
        "/v1/users/{user_id}/recommendations",
        response_model=Recommendations,
        dependencies=needs_key,
        summary="A user's fused list, or the global fallback for a user without one",
    )
    async def recommendations(user_id: str = user_id_path, k: int | None = k_query) -> Response:
        return _json(await holder["s"].recommendations(user_id, k or default_k))

    @app.post(
        "/v1/events",
        status_code=202,
        dependencies=needs_key,
        summary="Send one event or a batch (contract v1); 202 once the brokers acknowledged every one",
        responses={
            202: {"model": EventsAccepted},
            422: {"model": EventsRejected, "description": "Some events break the contract; none was sent."},
            503: {"description": "The brokers did not acknowledge in time; sending the batch again is safe."},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "One event object, or a JSON array of them (docs/events.md).",
                "content": {"application/json": {"schema": {"oneOf": [{"type": "object"}, {"type": "array"}]}}},
            }
        },
    )
    async def post_events(request: Request) -> Response:
        serving = holder["s"]
        raw = await read_body(request, api.max_body_bytes)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _json({"detail": f"body is not JSON: {exc}", "invalid": []}, 422)
        objects = data if isinstance(data, list) else [data]
        if not objects:
            return _json({"detail": "no events in the batch", "invalid": []}, 422)
        if len(objects) > api.max_events:
            return _json(
                {"detail": f"{len(objects):,} events; at most {api.max_events:,} per request", "invalid": []}, 422
            )
        events, invalid = validate_batch(settings, objects)
        if invalid:
            metrics.events.labels("invalid").inc(len(invalid))
            detail = f"{len(invalid)} of {len(objects)} events break the contract; none was sent"
            return _json({"detail": detail, "invalid": invalid}, 422)
        try:
            offsets = await serving.sender.send(events)
        except DeliveryError as exc:
            metrics.events.labels("failed").inc(len(events))
            return _json({"detail": f"events not confirmed by the brokers: {exc}"}, 503, {"Retry-After": "1"})
        metrics.events.labels("delivered").inc(len(events))
        return _json({"accepted": len(events), "topic": serving.sender.topic, "offsets": offsets}, 202)

    @app.post(
        "/v1/rerank",
        response_model=Reranked,
        dependencies=needs_key,
        summary="Reorder the shop's candidates by the user's fused scores",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": RerankRequest.model_json_schema()}},
            }
        },
    )
    async def rerank(request: Request) -> Response:
        serving = holder["s"]
        raw = await read_body(request, api.max_body_bytes)
        try:
            body = RerankRequest.model_validate_json(raw)
        except ValidationError as exc:
            return _json({"detail": exc.errors(include_url=False, include_context=False)}, 422)
        if len(body.items) > api.max_rerank_items:
            return _json({"detail": f"{len(body.items):,} items; at most {api.max_rerank_items:,} per request"}, 422)
        rec = await serving.read_list(body.user_id)
        return _json(rerank_items(body.user_id, body.items, rec))

    @app.get(
        "/v1/items/{item_id}/similar",
        response_model=Similar,
        dependencies=needs_key,
        summary="Items most co-visited with this one (global, from the workers' item side)",
        responses={503: {"description": "No item-side snapshot in Redis yet."}},
    )
    async def similar(item_id: str = Path(min_length=1, max_length=MAX_ID_LENGTH), k: int | None = k_query) -> Response:
        serving = holder["s"]
        k = k or default_k
        raw = await serving.get(serving.settings.redis.keys.similar(item_id))
        view = serving.item_side.view
        if raw is None and not view.loaded_at:
            return _json(
                {
                    "detail": "no item side published yet: the workers snapshot theirs to Redis every "
                    "FUSIONREC_WORKER_SNAPSHOT_INTERVAL_S, and the API publishes its lists from it every "
                    "FUSIONREC_API_ITEM_SIDE_REFRESH_S"
                },
                503,
                {"Retry-After": str(int(api.item_side_refresh_s))},
            )
        unavailable = serving.unavailable
        found = orjson.loads(raw) if raw is not None else []
        items = [{"item_id": other, "score": s} for other, s in found if other not in unavailable and other != item_id]
        return _json(
            {"item_id": item_id, "items": items[:k], "source": view.origin, "as_of": int(view.loaded_at * 1000)}
        )

    @app.get(
        "/v1/weights", response_model=Weights, dependencies=needs_key, summary="The bandit's current fusion weights"
    )
    async def weights() -> Response:
        serving = holder["s"]
        keys = serving.settings.redis.keys
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                pattern = keys.all_weights(settings.topic.events)
                found = sorted([key async for key in serving.redis.scan_iter(match=pattern)])
                values = await serving.redis.mget(found) if found else []
        except TimeoutError:
            raise RedisError(f"no answer within {REDIS_TIMEOUT_S:g} s") from None
        partitions = {
            str(keys.partition_of(key)): orjson.loads(value)
            for key, value in zip(found, values, strict=True)
            if value is not None
        }
        return _json({"partitions": partitions, "mean": mean_weights(list(partitions.values()))})

    @app.get("/livez", summary="The process is up")
    async def livez() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", summary="Redis and the brokers are reachable", responses={503: {"description": "Not ready."}})
    async def readyz() -> Response:
        serving = holder["s"]
        problems = {}
        try:
            async with asyncio.timeout(2.0):
                await serving.redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            problems["redis"] = str(exc) or type(exc).__name__
        broker = await asyncio.to_thread(serving.sender.broker_reachable)
        if broker is not None:
            problems["kafka"] = broker
        if problems:
            return _json({"status": "not ready", "problems": problems}, 503)
        return _json({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    route = next(r for r in app.routes if getattr(r, "path", None) == "/v1/users/{user_id}/recommendations")
    fast = FastRecommendations(app, holder, ApiKeyCheck(api.hashes), route, default_k, api.max_k)
    return MetricsMiddleware(fast, metrics, api.max_body_bytes)


class FastRecommendations:
    """GET recommendations answered without FastAPI's routing, dependency and validation layers (most of a read's
    CPU); anything but a well-formed, authorised request (a bad ``k``, a missing key, an odd path) falls through to
    the FastAPI route, which answers it with the standard 401 or 422. Both build the body with
    :meth:`Serving.recommendations`."""

    PREFIX, SUFFIX = "/v1/users/", "/recommendations"

    def __init__(self, app: FastAPI, holder: dict, keys: ApiKeyCheck, route: Any, default_k: int, max_k: int):
        self.app, self.holder, self.keys, self.route = app, holder, keys, route
        self.default_k, self.max_k = default_k, max_k

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path.startswith(self.PREFIX) and path.endswith(self.SUFFIX):
                user_id = path[len(self.PREFIX) : -len(self.SUFFIX)]
                k = self._k(scope["query_string"])
                if 0 < len(user_id) <= MAX_ID_LENGTH and "/" not in user_id and k and self._admitted(scope):
                    scope["route"] = self.route  # the metrics' label, as if the router had matched
                    try:
                        body = orjson.dumps(await self.holder["s"].recommendations(user_id, k))
                        status = 200
                    except RedisError as exc:
                        log.warning("Redis: %s", exc)
                        body, status = orjson.dumps({"detail": f"Redis unavailable: {exc}"}), 503
                    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
                    await send({"type": "http.response.start", "status": status, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    def _k(self, query: bytes) -> int | None:
        if not query:
            return self.default_k
        name, _, value = query.partition(b"=")
        if name != b"k" or not value.isdigit() or b"&" in value:
            return None
        k = int(value)
        return k if 1 <= k <= self.max_k else None

    def _admitted(self, scope: dict) -> bool:
        if not self.keys.digests:
            return True
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                return self.keys.admits(value.decode("latin-1"))
        return False  # a bearer token, or none: the FastAPI route decides


def rerank_items(user_id: str, items: list[str], rec: Recommendation | None) -> dict[str, Any]:
    """The shop's ``items`` reordered: those on the user's list first, by fused score (best first), then the rest in
    the order given. Duplicates keep their first position."""
    on_list = {} if rec is None else {item.item_id: (pos, item) for pos, item in enumerate(rec.items, start=1)}
    first: dict[str, int] = {}
    for index, item_id in enumerate(items):
        first.setdefault(item_id, index)
    ranked = sorted((i for i in first if i in on_list), key=lambda i: -on_list[i][1].score)
    rest = [i for i in first if i not in on_list]
    out = []
    for item_id in ranked:
        pos, item = on_list[item_id]
        parts = " + ".join(f"{s} {item.contributions[s]:.2f}" for s in item.sources)
        out.append(
            {
                "item_id": item_id,
                "score": item.score,
                "on_list": True,
                "list_position": pos,
                "given_position": first[item_id],
                "sources": item.sources,
                "reason": f"#{pos} on the user's fused list" + (f": {parts}" if parts else ""),
            }
        )
    reason = "not on the user's fused list: kept in the given order" if rec else "no list for this user yet"
    for item_id in rest:
        out.append(
            {
                "item_id": item_id,
                "score": None,
                "on_list": False,
                "list_position": None,
                "given_position": first[item_id],
                "sources": [],
                "reason": reason,
            }
        )
    return {
        "user_id": user_id,
        "personalised": rec is not None,
        "items": out,
        "generated_at": None if rec is None else rec.generated_at,
    }


def mean_weights(entries: list[dict]) -> dict[str, dict[str, float]]:
    """Per segment, each source's weight averaged over the partitions' entries (``{"weights": {seg: {src: w}}}``)."""
    sums: dict[str, dict[str, list[float]]] = {}
    for entry in entries:
        for segment, weights in entry.get("weights", {}).items():
            for source, weight in weights.items():
                sums.setdefault(segment, {}).setdefault(source, []).append(float(weight))
    return {seg: {src: sum(ws) / len(ws) for src, ws in by.items()} for seg, by in sums.items()}
