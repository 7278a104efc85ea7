"""Latency of the serving API's recommendation read at a fixed offered rate, beside a raw Redis GET at the same rate.

Starts a private embedded stack (Tansu + Redis on free loopback ports), fills Redis with ``--users`` fused lists of
``--k`` items (the worker's JSON, :func:`fusionrec.contracts.recommendations.encode`), starts ``fusionrec serve``
(uvicorn, uvloop, httptools; an API key configured, so every request pays for the check) and drives, one after the
other, for the same users drawn uniformly:

  * **api**: ``GET /v1/users/{user}/recommendations`` over HTTP/1.1 keep-alive connections;
  * **livez**: ``GET /livez``, the HTTP stack alone (no Redis, no JSON);
  * **redis**: ``GET {prefix}rec:{user}`` with redis-py's asyncio client (hiredis), from this process: the floor
    any server of these lists pays.

Beside the latencies it prints the server's CPU time per request (user + system, all its threads, from /proc):
the figure that contention on a shared machine moves least.

The load is **open loop**: request ``i`` is due at ``start + i / rate`` whatever happened before, and its latency
is measured from that due time to the end of its response, so a stall delays every request due during it and shows
in the tail (no coordinated omission). Requests wait for a free connection (``--connections``) when all are busy;
that wait counts too. The client is an asyncio loop (uvloop) in this process with a minimal HTTP/1.1 reader;
``send lag`` says how late it sent (if it is large, the client, not the server, was the bottleneck).

    python benchmarks/bench_api.py                       # 1,000 requests/s for 20 s, 10,000 users
    python benchmarks/bench_api.py --rate 2000 --duration 10 --json-out api.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from pathlib import Path

import httpx
import redis
import redis.asyncio as aioredis
import uvloop

from fusionrec.apps.serve import hash_key
from fusionrec.apps.serve.child import ServerChild
from fusionrec.contracts.recommendations import Policy, Recommendation, RecommendedItem, encode
from fusionrec.contracts.settings import Settings
from fusionrec.infra.admin import ensure_topics
from fusionrec.infra.stack import Stack, private_settings
from fusionrec.streams.metrics import histogram_quantile

KEY = "bench-key"
SOURCES = ("cf", "covisit", "popular", "trending", "category", "recent")


def fill(settings: Settings, users: int, k: int, seed: int = 7) -> int:
    """Write ``users`` lists of ``k`` items to Redis; return the mean value size in bytes."""
    rng = random.Random(seed)
    client = redis.Redis.from_url(settings.redis.url)
    now = int(time.time() * 1000)
    total = 0
    pipe = client.pipeline(transaction=False)
    for u in range(users):
        items = []
        for rank in range(k):
            parts = {s: round(rng.random() / (rank + 1), 6) for s in rng.sample(SOURCES, 2)}
            items.append(RecommendedItem(f"item-{rng.randrange(200_000)}", round(sum(parts.values()), 6), parts, "c1"))
        rec = Recommendation(
            user_id=f"user-{u}",
            items=tuple(items),
            sources={s: tuple(f"item-{rng.randrange(200_000)}" for _ in range(k)) for s in SOURCES},
            segment="returning",
            policy=Policy("bandit", "exploit", 0.95, dict.fromkeys(SOURCES, 1 / 6)),
            weights_version=1,
            model_version="fusionrec-bench",
            generated_at=now,
            newest_event_ts=now - 150,
            partition=u % 6,
        )
        value = encode(rec)
        total += len(value)
        pipe.set(settings.redis.keys.recommendation(rec.user_id), value)
        if u % 1000 == 999:
            pipe.execute()
    pipe.execute()
    client.close()
    return total // max(users, 1)


class _Conn:
    """One keep-alive HTTP/1.1 connection that sends a GET and reads one response (Content-Length bodies)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, headers: str):
        self.reader, self.writer, self.host, self.headers = reader, writer, host, headers

    async def get(self, path: str) -> int:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.headers}\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status


async def _open_loop(rate: float, duration: float, connections: int, make, call) -> dict:
    """Issue ``rate × duration`` calls at their due times over ``connections`` workers; latency from due time."""
    n = int(rate * duration)
    queue: asyncio.Queue = asyncio.Queue()
    latencies: list[float] = []
    lags: list[float] = []
    errors: dict[str, int] = {}
    rng = random.Random(11)

    async def worker() -> None:
        conn = await make()
        while True:
            due, arg = await queue.get()
            if due is None:
                return
            try:
                status = await call(conn, arg)
                if status != 200:
                    errors[str(status)] = errors.get(str(status), 0) + 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted, by kind
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                conn = await make()
            latencies.append(time.perf_counter() - due)

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    await asyncio.sleep(0.2)  # connections open before the clock starts
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        lags.append(time.perf_counter() - due)
        queue.put_nowait((due, rng.randrange(1 << 30)))
    for _ in workers:
        queue.put_nowait((None, None))
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    return _summary(latencies, lags, errors, n, elapsed)


def _summary(latencies: list[float], lags: list[float], errors: dict[str, int], n: int, elapsed: float) -> dict:
    ordered = sorted(latencies)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else float("nan")

    lag = sorted(lags)
    return {
        "requests": n,
        "completed_per_s": len(latencies) / elapsed,
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": ordered[-1] * 1000 if ordered else float("nan"),
        "errors": errors,
        "send_lag_p99_ms": lag[int(0.99 * (len(lag) - 1))] * 1000 if lag else float("nan"),
    }


async def run_api(url: str, path_of, rate: float, duration: float, connections: int) -> dict:
    host, port = url.removeprefix("http://").split(":")

    async def make() -> _Conn:
        reader, writer = await asyncio.open_connection(host, int(port))
        return _Conn(reader, writer, f"{host}:{port}", f"X-API-Key: {KEY}\r\n")

    return await _open_loop(rate, duration, connections, make, lambda conn, r: conn.get(path_of(r)))


async def run_redis(settings: Settings, users: int, rate: float, duration: float, connections: int) -> dict:
    client = aioredis.Redis.from_url(settings.redis.url, max_connections=connections)
    keys = settings.redis.keys

    async def make():
        return client

    async def call(c, r: int) -> int:
        value = await c.get(keys.recommendation(f"user-{r % users}"))
        return 200 if value is not None else 404

    try:
        return await _open_loop(rate, duration, connections, make, call)
    finally:
        await client.aclose()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _print(name: str, s: dict) -> None:
    errors = sum(s["errors"].values())
    print(
        f"{name:<7} {s['completed_per_s']:>8,.0f}/s  p50 {s['p50_ms']:6.2f} ms  p99 {s['p99_ms']:6.2f} ms  "
        f"p99.9 {s['p999_ms']:7.2f} ms  max {s['max_ms']:7.2f} ms  errors {errors:,} {s['errors'] or ''}  "
        f"(send lag p99 {s['send_lag_p99_ms']:.2f} ms)"
        + (f"  server CPU {s['server_cpu_us']:.0f} us/request" if "server_cpu_us" in s else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="offered requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load on the API")
    parser.add_argument("--baseline-duration", type=float, default=10.0, help="seconds of each baseline")
    parser.add_argument("--users", type=int, default=10_000, help="users with a stored list")
    parser.add_argument("--k", type=int, default=20, help="items per stored list")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections of the client")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fusionrec-bench-api-"))
    settings = private_settings(tmp / "stack", "bench-api").replace(api_key_hashes=hash_key(KEY))
    stack = Stack(settings)
    stack.up()
    server = None
    try:
        ensure_topics(settings)
        size = fill(settings, args.users, args.k)
        print(f"{args.users:,} lists of {args.k} items in Redis ({size:,} bytes each on average)")
        server = ServerChild(settings, tmp / "serve.log", FUSIONREC_LOG_LEVEL="WARNING").wait_live()
        users = args.users
        with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}) as http:  # warm up, and check one read
            for u in range(200):
                body = http.get(f"/v1/users/user-{u}/recommendations").json()
            assert body["fallback"] is False and len(body["items"]) == args.k, body
        print(
            f"open loop at {args.rate:,.0f} requests/s over {args.connections} connections; latency from each "
            "request's due time to the end of its response"
        )
        uvloop.install()
        results = {}
        cpu = cpu_seconds(server.pid)
        results["api"] = asyncio.run(
            run_api(
                server.url,
                lambda r: f"/v1/users/user-{r % users}/recommendations",
                args.rate,
                args.duration,
                args.connections,
            )
        )
        results["api"]["server_cpu_us"] = (cpu_seconds(server.pid) - cpu) / results["api"]["requests"] * 1e6
        _print("api", results["api"])
        scraped = _scrape(server.url)
        results["api"]["server_p99_ms"] = (
            histogram_quantile(
                scraped, 'fusionrec_api_request_seconds{route="/v1/users/{user_id}/recommendations"}', 0.99
            )
            * 1000
        )
        print(
            f"        server-side p99 (its histogram, linear within buckets): {results['api']['server_p99_ms']:.2f} ms"
        )
        cpu = cpu_seconds(server.pid)
        results["livez"] = asyncio.run(
            run_api(server.url, lambda _: "/livez", args.rate, args.baseline_duration, args.connections)
        )
        results["livez"]["server_cpu_us"] = (cpu_seconds(server.pid) - cpu) / results["livez"]["requests"] * 1e6
        _print("livez", results["livez"])
        results["redis"] = asyncio.run(run_redis(settings, users, args.rate, args.baseline_duration, args.connections))
        _print("redis", results["redis"])
        if args.json_out:
            args.json_out.write_text(json.dumps(vars(args) | {"json_out": None, "results": results}, indent=2) + "\n")
            print(f"wrote {args.json_out}")
    finally:
        if server is not None:
            server.stop()
        stack.down()


def _scrape(url: str) -> dict[str, float]:
    """The server's histogram buckets as ``name{labels,le="x"}`` keys (what histogram_quantile reads)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "fusionrec_api_request_seconds_bucket":
                route = sample.labels["route"]
                le = sample.labels["le"]
                out[f'fusionrec_api_request_seconds{{route="{route}"}}_bucket{{le="{le}"}}'] = sample.value
    return out


if __name__ == "__main__":
    main()
