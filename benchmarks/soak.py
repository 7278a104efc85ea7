"""Soak: one worker on a private embedded stack fed at a steady rate for minutes; does anything grow or drift?

Replays a dataset in a loop at ``--rate`` events/s (each pass with event ids of its own, stamped when sent, so every
pass is new traffic from the same users, as a shop's is), and every ``--every`` seconds prints, from the worker's
own metrics and ``/proc``: events applied, the backlog (acknowledged by the broker but not yet applied), the
processing and freshness p99 of that window, the worker's RSS and Redis's ``used_memory``. At the end: RSS growth
over the second half of the run (MB per minute; the first half is warm-up: models fill to their caps), the
backlog's trend, and the p99s over the whole run. The issue's soak is 10 minutes at half the measured maximum rate.

    python benchmarks/soak.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz --minutes 10 \
        --rate 1000
"""

from __future__ import annotations

import argparse
import math
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import redis

from fusionrec.infra.admin import ensure_topics
from fusionrec.infra.stack import Stack, private_settings
from fusionrec.producers.datasets import read_dataset
from fusionrec.producers.producer import EventProducer
from fusionrec.producers.replay import replay_events
from fusionrec.streams.child import WorkerChild
from fusionrec.streams.metrics import histogram_quantile

PROCESSING = "fusionrec_worker_processing_latency_seconds"
FRESHNESS = "fusionrec_recommendations_freshness_seconds"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def window(now: Counter, then: Counter, name: str, q: float) -> float:
    delta = Counter({k: now[k] - then.get(k, 0.0) for k in now if k.startswith(name)})
    return histogram_quantile(delta, name, q) * 1000


def fmt_ms(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:,.0f}"


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points (0 for fewer than two)."""
    if len(points) < 2:
        return 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s offered")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between report lines")
    parser.add_argument("--limit", type=int, default=None, help="events of the file per pass")
    args = parser.parse_args()

    events = read_dataset(args.path, limit=args.limit).events
    tmp = Path(tempfile.mkdtemp(prefix="fusionrec-soak-"))
    settings = private_settings(tmp / "stack", "soak", topic_events_partitions=6)
    stack = Stack(settings)
    stack.up()
    ensure_topics(settings)
    worker = WorkerChild(settings, tmp / "worker.log", FUSIONREC_STATE_DIR=str(tmp / "worker"))
    client = redis.Redis.from_url(settings.redis.url)
    stop = threading.Event()
    sent = {"passes": 0}
    producer = EventProducer(settings, validate=False)

    def feed() -> None:
        while not stop.is_set():
            n = sent["passes"]
            batch = [e._replace(event_id=f"{e.event_id}~{n}") for e in events]
            # In slices, so that a stop request is seen within a few seconds.
            for start in range(0, len(batch), max(1, int(args.rate * 5))):
                if stop.is_set():
                    return
                replay_events(batch[start : start + int(args.rate * 5)], producer, rate=args.rate)
            sent["passes"] += 1

    try:
        worker.wait_for(lambda _m: True, timeout=60)
        feeder = threading.Thread(target=feed, name="feed", daemon=True)
        began = time.monotonic()
        feeder.start()
        print(
            f"soak: {len(events):,} events of {args.path.name} per pass at {args.rate:,.0f} ev/s for "
            f"{args.minutes:g} min; one worker (pid {worker.pid}), 6 partitions; log {worker.log_path}"
        )
        print(
            f"{'min':>5} {'applied':>10} {'backlog':>8} {'proc p99 ms':>12} {'fresh p99 ms':>13} "
            f"{'RSS MB':>8} {'Redis MB':>9}"
        )
        first = last = worker.metrics()
        rss: list[tuple[float, float]] = []
        backlog: list[tuple[float, float]] = []
        deadline = began + args.minutes * 60
        while time.monotonic() < deadline:
            time.sleep(min(args.every, max(deadline - time.monotonic(), 0.1)))
            now = worker.metrics() or last
            minutes = (time.monotonic() - began) / 60
            applied = now["fusionrec_worker_events_total"]
            behind = max(producer.stats.delivered - applied, 0)  # delivery reports trail the worker a little
            memory = rss_mb(worker.pid)
            rss.append((minutes, memory))
            backlog.append((minutes, behind))
            print(
                f"{minutes:5.1f} {applied:10,.0f} {behind:8,.0f} {fmt_ms(window(now, last, PROCESSING, 0.99)):>12} "
                f"{fmt_ms(window(now, last, FRESHNESS, 0.99)):>13} {memory:8,.0f} "
                f"{client.info('memory')['used_memory'] / 2**20:9,.1f}",
                flush=True,
            )
            last = now
        stop.set()
        feeder.join(timeout=30)
        half = [p for p in rss if p[0] >= args.minutes / 2]
        print(
            f"\nRSS {rss[0][1]:,.0f} → {rss[-1][1]:,.0f} MB; growth over the second half "
            f"{slope(half):+,.1f} MB/min. Backlog trend {slope(backlog):+,.0f} events/min "
            f"(last {backlog[-1][1]:,.0f}). "
            f"Whole run p99: processing {fmt_ms(window(last, first, PROCESSING, 0.99))} ms, freshness "
            f"{fmt_ms(window(last, first, FRESHNESS, 0.99))} ms; {producer.stats.delivered:,} events acknowledged "
            f"in {sent['passes']} full passes and a part."
        )
    finally:
        stop.set()
        producer.close()
        worker.stop()
        client.close()
        stack.down()


if __name__ == "__main__":
    main()
