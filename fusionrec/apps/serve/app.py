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
from fusionrec.contracts.recommendations import Recommendation, RecommendationFormatError, decode
from fusionrec.contracts.settings import Settings

__all__ = ["Serving", "create_app"]

log = logging.getLogger("fusionrec.serve")

#: How often the set of unavailable items is re-read from Redis.
UNAVAILABLE_REFRESH_S = 1.0


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
    unavailable: frozenset[str] = frozenset()
    tasks: list[asyncio.Task] = field(default_factory=list)

    @classmethod
    def connect(cls, settings: Settings, metrics: ApiMetrics) -> Serving:
        client = aioredis.Redis.from_url(
            settings.redis.url,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=30,
            **settings.redis.client_kwargs(),
        )
        return cls(settings, metrics, client, ItemSideCache(client, settings), EventSender(settings))

    async def _every(self, seconds: float, what: str, step: Any) -> None:
        failing = False
        while True:
            try:
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
        await self.redis.aclose()

    async def read_list(self, user_id: str) -> Recommendation | None:
        raw = await self.redis.get(self.settings.redis.keys.recommendation(user_id))
        if raw is None:
            return None
        try:
            return decode(raw)
        except RecommendationFormatError as exc:
            log.warning("stored list of user %r is invalid, serving the fallback: %s", user_id, exc)
            return None


def _items(rec: Recommendation, unavailable: frozenset[str], k: int) -> list[dict[str, Any]]:
    out = []
    for item in rec.items:
        if item.item_id in unavailable:
            continue
        out.append(
            {
                "item_id": item.item_id,
                "score": item.score,
                "category_id": item.category_id,
                "sources": item.sources,
                "contributions": dict(item.contributions),
            }
        )
        if len(out) == k:
            break
    return out


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
        serving = holder["s"]
        k = k or default_k
        rec = await serving.read_list(user_id)
        if rec is not None:
            return _json(
                {
                    "user_id": user_id,
                    "fallback": False,
                    "fallback_source": None,
                    "items": _items(rec, serving.unavailable, k),
                    "generated_at": rec.generated_at,
                    "newest_event_ts": rec.newest_event_ts,
                    "freshness_ms": _now_ms() - rec.newest_event_ts,
                    "segment": rec.segment,
                    "ranker": rec.ranker,
                    "policy": {"arm": rec.policy.arm, "action": rec.policy.action, "propensity": rec.policy.propensity},
                    "model_version": rec.model_version,
                }
            )
        metrics.fallbacks.inc()
        view = serving.item_side.view
        unavailable = serving.unavailable
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
        return _json(
            {
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
        )

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
        view = serving.item_side.view
        unavailable = serving.unavailable
        found = view.neighbours(item_id, k + min(len(unavailable), 4 * k))
        if found is None:
            return _json(
                {
                    "detail": "no co-visitation model loaded yet: the workers snapshot their item side to Redis every "
                    "FUSIONREC_WORKER_SNAPSHOT_INTERVAL_S, and the API reads it every FUSIONREC_API_ITEM_SIDE_REFRESH_S"
                },
                503,
                {"Retry-After": str(int(api.item_side_refresh_s))},
            )
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
        found = sorted([key async for key in serving.redis.scan_iter(match=keys.all_weights(settings.topic.events))])
        values = await serving.redis.mget(found) if found else []
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

    return MetricsMiddleware(app, metrics, api.max_body_bytes)


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
