"""The serving API's pipelined GET client against the session's real Redis: replies reach their callers in order,
a lost connection fails what was in flight and the next read reconnects."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from fusionrec.apps.serve.redis_gets import CLIENT_NAME, PipelinedGets


@pytest.fixture
def prefix(stack):
    tag = f"gets{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(stack.settings.redis.url)
    yield client, tag
    for key in client.scan_iter(match=f"{tag}*"):
        client.delete(key)
    client.close()


def test_concurrent_gets_each_get_their_own_value(stack, prefix):
    client, tag = prefix
    client.mset({f"{tag}{n}": f"value-{n}".encode() * (n % 7 + 1) for n in range(300)})

    async def run():
        gets = PipelinedGets(stack.settings.redis)
        try:
            keys = [f"{tag}{n}" for n in range(300)] + [f"{tag}missing"]
            return await asyncio.gather(*(gets.get(key) for key in keys))
        finally:
            gets.close()

    values = asyncio.run(run())
    assert values[:300] == [f"value-{n}".encode() * (n % 7 + 1) for n in range(300)]
    assert values[300] is None


def test_a_lost_connection_fails_and_the_next_get_reconnects(stack, prefix):
    client, tag = prefix
    client.set(f"{tag}k", b"v")

    async def run():
        gets = PipelinedGets(stack.settings.redis)
        try:
            assert await gets.get(f"{tag}k") == b"v"
            ours = [c for c in client.client_list() if c["name"] == CLIENT_NAME.decode()]
            assert len(ours) == 1
            client.client_kill_filter(_id=ours[0]["id"])
            outcomes = []
            for _ in range(20):  # the first read after the kill may fail; one soon after reconnects
                try:
                    outcomes.append(await gets.get(f"{tag}k"))
                    break
                except RedisConnectionError:
                    outcomes.append("lost")
                    await asyncio.sleep(0.05)
            return outcomes
        finally:
            gets.close()

    outcomes = asyncio.run(run())
    assert outcomes[-1] == b"v", outcomes
    assert set(outcomes) <= {"lost", b"v"}
