"""The global item side for the API: the fallback list and each item's "also viewed" neighbours, in Redis.

The workers keep the shop-wide item side (popularity, trending, co-visitation) in memory and snapshot it to Redis
every snapshot interval (``{prefix}items:{item-side topic}``, :mod:`fusionrec.streams.item_side`). Restoring those
models takes seconds for a real shop (4 s for the Taobao slice's 14 MB here), and unpickling holds the GIL: done in
the API's event loop it would stall every request that long, each time the snapshot changes. So the work is done
in a **child process**, and its results go to Redis, where every API process reads them with one ``GET``:

* ``{prefix}similar:{item_id}``: the item's neighbours, ``[[item, score], ...]``, best first (rewritten only for
  the items whose list changed since the last load; deleted for items the item side forgot);
* ``{prefix}fallback``: the trending items, then popular ones, ``{"items": [[item, score, source], ...], "origin",
  "loaded_at"}``.

One API process writes them at a time: the holder of the lease ``{prefix}api-writer`` (renewed each refresh,
taken over by another process when it lapses); the others only read. With ``FUSIONREC_MODEL_ITEM_SYNC_MS=0`` there
is no shared item side: each partition's snapshot (``{prefix}snap:{events topic}:{p}``) holds its own models,
learned from its users' events, and their scores are summed, which is what one shared model would have counted.

What is served is as old as the last snapshot (``FUSIONREC_WORKER_SNAPSHOT_INTERVAL_S``, 10 s by default) plus the
refresh interval (``FUSIONREC_API_ITEM_SIDE_REFRESH_S``) plus the load.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import multiprocessing
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from fusionrec.contracts.settings import Settings
from fusionrec.stores.client import connect

__all__ = ["ItemSideCache", "ItemSideView", "publish_item_lists"]

log = logging.getLogger("fusionrec.serve")

#: How many items of the global lists are kept for the fallback (what remains after filtering is cut to k).
FALLBACK_POOL = 500
#: Neighbours kept per item (a request's k beyond this gets what there is).
NEIGHBOURS = 60
_MODELS = ("covisit", "trending", "popular")
_WRITE_CHUNK = 2000


@dataclass(frozen=True)
class ItemSideView:
    """The fallback pool as last read from Redis: ``(item_id, score, source)``, best first."""

    fallback: tuple[tuple[str, float, str], ...] = ()
    origin: str = ""
    #: When the item side behind it was loaded (epoch seconds; 0: nothing published yet).
    loaded_at: float = 0.0


# --- the child process -------------------------------------------------------------------------------------------

#: The child's memory between calls: its Redis client, the last snapshot's signature, each item's published value.
_CHILD: dict[str, Any] = {}


def _sources(client: redis.Redis, settings: Settings) -> tuple[str, list[str], tuple]:
    """Which snapshots to read and a signature that changes when they do."""
    keys = settings.redis.keys
    item_side = keys.item_side(settings.item_side_topic)
    positions = client.hget(item_side, "positions")
    if positions is not None:
        return item_side, [item_side], (positions,)
    pattern = keys.snapshots(settings.topic.events)
    found = sorted(k.decode() for k in client.scan_iter(match=pattern, count=1000))
    if not found:
        return "", [], ()
    pipe = client.pipeline(transaction=False)
    for key in found:
        pipe.hget(key, "offset")
    return pattern, found, tuple(pipe.execute())


def _lists(blobs: list[dict[str, bytes]]) -> tuple[list[list], dict[str, bytes]]:
    """The fallback pool and every item's encoded neighbours from the ``model:*`` fields of the snapshots."""
    from fusionrec.models import Recommender  # torch comes with the models: only in this child

    summed: dict[str, dict[str, float]] = {"trending": {}, "popular": {}}
    links: dict[str, dict[str, float]] = {}
    for fields in blobs:
        for name in _MODELS:
            blob = fields.get(name)
            if blob is None:
                continue
            model = Recommender.restore(blob)
            if name == "covisit":
                # the items with neighbours: the model lists them only in its private state
                for item in list(model._links):
                    into = links.setdefault(item, {})
                    for other, strength in model.neighbours(item, NEIGHBOURS):
                        into[other] = into.get(other, 0.0) + strength
            else:
                into = summed[name]
                for item, score in model.candidates("", FALLBACK_POOL):
                    into[item] = into.get(item, 0.0) + score
    pool: list[list] = []
    seen: set[str] = set()
    for name in ("trending", "popular"):
        for item, score in heapq.nlargest(FALLBACK_POOL, summed[name].items(), key=lambda kv: (kv[1], kv[0])):
            if item not in seen and score > 0:
                seen.add(item)
                pool.append([item, round(score, 6), name])
    encoded = {}
    for item, others in links.items():
        best = [[o, round(s, 6)] for o, s in heapq.nlargest(NEIGHBOURS, others.items(), key=lambda kv: (kv[1], kv[0]))]
        if best and best[0][1] > 0:  # an item without neighbours has no key (and so an empty answer)
            encoded[item] = orjson.dumps([entry for entry in best if entry[1] > 0])
    return pool[:FALLBACK_POOL], encoded


def publish_item_lists(settings: Settings, owner: str, lease_s: float) -> dict[str, Any]:
    """In the child process: if this API process holds the writer lease, load the item-side snapshot when it
    changed and publish the fallback and the neighbours that changed to Redis. Returns what it did."""
    client = _CHILD.get("client")
    if client is None:
        client = _CHILD["client"] = connect(settings.redis, socket_timeout=30)
    keys = settings.redis.keys
    lease = max(1, int(lease_s))
    if not client.set(keys.api_writer, owner, nx=True, ex=lease):
        if client.get(keys.api_writer) != owner.encode():
            return {"writer": False}
        client.expire(keys.api_writer, lease)
    origin, found, signature = _sources(client, settings)
    if not found or signature == _CHILD.get("signature"):
        return {"writer": True, "loaded": False}
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for key in found:
        pipe.hmget(key, [f"model:{name}" for name in _MODELS])
    blobs = [{n: b for n, b in zip(_MODELS, row, strict=True) if b is not None} for row in pipe.execute()]
    pool, encoded = _lists(blobs)
    previous: dict[str, bytes] | None = _CHILD.get("published")
    if previous is None:  # a new writer: whatever an earlier one left that is no longer there goes
        stale = {k.decode()[len(keys.similar("")) :] for k in client.scan_iter(match=keys.similar("*"), count=1000)}
        previous = dict.fromkeys(stale, b"")
    changed = [(item, value) for item, value in encoded.items() if previous.get(item) != value]
    removed = [item for item in previous if item not in encoded]
    for start in range(0, len(changed), _WRITE_CHUNK):
        pipe = client.pipeline(transaction=False)
        for item, value in changed[start : start + _WRITE_CHUNK]:
            pipe.set(keys.similar(item), value)
        pipe.execute()
    for start in range(0, len(removed), _WRITE_CHUNK):
        client.delete(*(keys.similar(item) for item in removed[start : start + _WRITE_CHUNK]))
    loaded_at = time.time()
    client.set(keys.fallback, orjson.dumps({"items": pool, "origin": origin, "loaded_at": loaded_at}))
    _CHILD["published"], _CHILD["signature"] = encoded, signature
    return {
        "writer": True,
        "loaded": True,
        "origin": origin,
        "snapshots": len(found),
        "items": len(encoded),
        "written": len(changed),
        "removed": len(removed),
        "seconds": time.perf_counter() - started,
    }


# --- the API process ---------------------------------------------------------------------------------------------


class ItemSideCache:
    """Runs :func:`publish_item_lists` in a child process and keeps the fallback pool read from Redis."""

    def __init__(self, client: aioredis.Redis, settings: Settings):
        self.client = client
        self.settings = settings
        self.owner = uuid.uuid4().hex
        self.view = ItemSideView()
        self._pool: ProcessPoolExecutor | None = None

    async def refresh(self) -> bool:
        """Publish (if this process is the writer and the snapshot changed), then re-read the fallback; return
        whether the fallback read is new."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        lease = 3 * self.settings.api.item_side_refresh_s + 30
        report = await asyncio.get_running_loop().run_in_executor(
            self._pool, publish_item_lists, self.settings, self.owner, lease
        )
        if report.get("loaded"):
            log.info(
                "published the item side from %s (%d snapshot%s) in %.1f s: %d items with neighbours, %d written, "
                "%d removed",
                report["origin"],
                report["snapshots"],
                "" if report["snapshots"] == 1 else "s",
                report["seconds"],
                report["items"],
                report["written"],
                report["removed"],
            )
        raw = await self.client.get(self.settings.redis.keys.fallback)
        if raw is None:
            return False
        data = orjson.loads(raw)
        if data["loaded_at"] == self.view.loaded_at:
            return False
        self.view = ItemSideView(tuple(tuple(entry) for entry in data["items"]), data["origin"], data["loaded_at"])
        return True

    def close(self) -> None:
        """Stop the child at once (a load in progress is abandoned; the next writer redoes it)."""
        if self._pool is not None:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.terminate()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
