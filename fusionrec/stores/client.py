"""The Redis client for the settings: one Redis, or Redis Cluster (``FUSIONREC_REDIS_CLUSTER``).

Every fusionrec process connects through :func:`connect` (or :func:`connect_async`), so the choice is made in one
place. The cluster client routes each command by its key's slot; multi-key commands must stay within one slot,
which the key schema's hash tags (:mod:`fusionrec.contracts.keys`) and the callers arrange (docs/worker.md,
"Redis Cluster").
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from fusionrec.contracts.settings import RedisSettings

__all__ = ["connect", "connect_async", "is_cluster"]


def connect(settings: RedisSettings, **kwargs: Any) -> redis.Redis:
    """A client for ``settings.url`` (``kwargs``: more of redis-py's connection arguments)."""
    kwargs |= settings.client_kwargs()
    if settings.cluster:
        return RedisCluster.from_url(settings.url, **kwargs)  # type: ignore[return-value]
    return redis.Redis.from_url(settings.url, **kwargs)


def connect_async(settings: RedisSettings, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client for ``settings.url`` (the serving API)."""
    kwargs |= settings.client_kwargs()
    if settings.cluster:
        kwargs.pop("health_check_interval", None)  # the cluster client checks its nodes itself
        return AsyncRedisCluster.from_url(settings.url, **kwargs)  # type: ignore[return-value]
    return aioredis.Redis.from_url(settings.url, **kwargs)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (its multi-key calls must then stay within one slot)."""
    return isinstance(client, RedisCluster | AsyncRedisCluster)
