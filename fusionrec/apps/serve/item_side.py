"""The global item side, as the workers last snapshotted it: the fallback list and "also viewed" neighbours.

The workers keep the shop-wide item side (popularity, trending, co-visitation) in memory and snapshot it to Redis
every snapshot interval (``{prefix}items:{item-side topic}``, :mod:`fusionrec.streams.item_side`). The API reads that
snapshot, no worker change needed, whenever it changed (``positions``, the topic offsets the replica had read,
differs), and restores the three models from it in a thread. With ``FUSIONREC_MODEL_ITEM_SYNC_MS=0`` there is no
shared item side: each partition's snapshot (``{prefix}snap:{events topic}:{p}``) holds its own models, learned from
its users' events, and the API sums their scores, which is what one shared model would have counted.

What it serves is as old as the last snapshot (``FUSIONREC_WORKER_SNAPSHOT_INTERVAL_S``, 10 s by default) plus the
refresh interval (``FUSIONREC_API_ITEM_SIDE_REFRESH_S``).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from fusionrec.contracts.settings import Settings

__all__ = ["ItemSideCache", "ItemSideView"]

log = logging.getLogger("fusionrec.serve")

#: How many items of the global lists are kept for the fallback (what remains after filtering is cut to k).
FALLBACK_POOL = 500
_MODELS = ("covisit", "trending", "popular")


@dataclass(frozen=True)
class ItemSideView:
    """One loaded snapshot: the fallback pool (trending first, then popular) and the co-visitation models."""

    #: ``(item_id, score, source)``, best first: the trending items, then popular ones not already there.
    fallback: tuple[tuple[str, float, str], ...] = ()
    covisit: tuple[Any, ...] = ()
    #: Where it was read from (``items:...`` or the partition snapshots) and when (epoch seconds).
    origin: str = ""
    loaded_at: float = 0.0
    partitions: int = 0
    signature: tuple = field(default=(), repr=False)

    def neighbours(self, item_id: str, k: int) -> list[tuple[str, float]] | None:
        """The ``k`` items most co-visited with ``item_id`` (summed over the partitions' models); None when no
        co-visitation model was loaded."""
        if not self.covisit:
            return None
        if len(self.covisit) == 1:
            return self.covisit[0].neighbours(item_id, k)
        total: dict[str, float] = {}
        for model in self.covisit:
            for other, strength in model.neighbours(item_id, 4 * k):
                total[other] = total.get(other, 0.0) + strength
        return heapq.nlargest(k, total.items(), key=lambda kv: (kv[1], kv[0]))


def _restore(blobs: list[dict[str, bytes]]) -> tuple[tuple, tuple]:
    """The fallback pool and the co-visitation models from the ``model:*`` fields of one or more snapshots."""
    from fusionrec.models import Recommender  # torch comes with the models: only once there is a snapshot to read

    summed: dict[str, dict[str, float]] = {"trending": {}, "popular": {}}
    covisit = []
    for fields in blobs:
        for name in _MODELS:
            blob = fields.get(name)
            if blob is None:
                continue
            model = Recommender.restore(blob)
            if name == "covisit":
                covisit.append(model)
            else:
                into = summed[name]
                for item, score in model.candidates("", FALLBACK_POOL):
                    into[item] = into.get(item, 0.0) + score
    pool: list[tuple[str, float, str]] = []
    seen: set[str] = set()
    for name in ("trending", "popular"):
        for item, score in heapq.nlargest(FALLBACK_POOL, summed[name].items(), key=lambda kv: (kv[1], kv[0])):
            if item not in seen and score > 0:
                seen.add(item)
                pool.append((item, score, name))
    return tuple(pool[:FALLBACK_POOL]), tuple(covisit)


class ItemSideCache:
    """Keeps the latest :class:`ItemSideView` loaded; :meth:`refresh` is cheap when nothing changed."""

    def __init__(self, client: aioredis.Redis, settings: Settings):
        self.client = client
        keys = settings.redis.keys
        self.item_side_key = keys.item_side(settings.item_side_topic)
        self.snapshots_pattern = keys.snapshots(settings.topic.events)
        self.view = ItemSideView()

    async def _sources(self) -> tuple[str, list[str], tuple]:
        """Which snapshots to read and a signature that changes when they do."""
        positions = await self.client.hget(self.item_side_key, "positions")
        if positions is not None:
            return f"{self.item_side_key}", [self.item_side_key], (positions,)
        keys = sorted([key async for key in self.client.scan_iter(match=self.snapshots_pattern, count=1000)])
        if not keys:
            return "", [], ()
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "offset")
        offsets = await pipe.execute()
        return self.snapshots_pattern, [k.decode() if isinstance(k, bytes) else k for k in keys], tuple(offsets)

    async def refresh(self) -> bool:
        """Load the snapshot if it changed since the last load; return whether a new one was loaded."""
        origin, keys, signature = await self._sources()
        if not keys or signature == self.view.signature:
            return False
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, [f"model:{name}" for name in _MODELS])
        rows = await pipe.execute()
        blobs = [{name: blob for name, blob in zip(_MODELS, row, strict=True) if blob is not None} for row in rows]
        started = time.perf_counter()
        fallback, covisit = await asyncio.to_thread(_restore, blobs)
        self.view = ItemSideView(fallback, covisit, origin, time.time(), len(keys), signature)
        log.info(
            "loaded the item side from %s (%d snapshot%s) in %.0f ms: %d fallback items, %d co-visitation model%s",
            origin,
            len(keys),
            "" if len(keys) == 1 else "s",
            (time.perf_counter() - started) * 1000,
            len(fallback),
            len(covisit),
            "" if len(covisit) == 1 else "s",
        )
        return True
