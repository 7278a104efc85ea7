"""``fusionrec demo``: the whole pipeline on the embedded stack, narrated.

Starts the broker and Redis, creates the topics, starts a stream worker, replays a real dataset into the events
topic (plus a few malformed messages, to show the dead-letter path), waits until the worker has applied every
event, then shows what it built: throughput, latency, profiles, and each recommender's list for a few users.
Stops what it started unless asked to keep it running.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
from tqdm import tqdm

from fusionrec.profiles import ProfileStore
from fusionrec.settings import Settings
from fusionrec.stack import Stack
from fusionrec.topics import ensure_topics
from producers.datasets import read_dataset
from producers.producer import EventProducer
from producers.replay import replay_events
from streams.child import WorkerChild
from streams.metrics import histogram_quantile

__all__ = ["run_demo"]

MALFORMED = [b'{"event_id": "bad-1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 1}', b"not json"]


#: The demo's own Redis namespace, cleared at the start of every run: a system Redis outlives the embedded
#: memory broker, and state from an earlier run would name offsets the fresh topic does not have.
DEMO_PREFIX = "fr-demo:"


def run_demo(settings: Settings, path: Path, *, rate: float | None, limit: int | None, keep_running: bool,
             say: Callable[[str], None], step: Callable[[str], None]) -> bool:
    """Run the demo; return True when every event was accounted for."""
    from streams.rebuild import rebuild_state

    settings = settings.model_copy(update={"redis_prefix": DEMO_PREFIX})
    stack = Stack(settings)
    started = time.perf_counter()
    step("1/5 starting the embedded stack (Tansu broker, Redis)")
    services = stack.up()
    for svc in services:
        say(f"  {svc.name:<7} {svc.state:<8} {svc.address}" + (f" pid {svc.pid}" if svc.pid else ""))
    ours = any(svc.state == "running" for svc in services)
    worker = None
    try:
        cleared = rebuild_state(settings).keys_deleted
        if cleared:
            say(f"  cleared {cleared:,} Redis keys of an earlier demo run (namespace {DEMO_PREFIX!r})")
        step("2/5 creating topics")
        for state in ensure_topics(settings):
            say(f"  {state.spec.name:<28} {'created' if state.created else 'exists':<8} "
                f"partitions={state.partitions}")

        step("3/5 starting a stream worker")
        log_dir = Path(tempfile.mkdtemp(prefix="fusionrec-demo-"))
        worker = WorkerChild(settings, log_dir / "worker.log")
        say(f"  pid {worker.pid}, metrics on 127.0.0.1:{worker.metrics_port}/metrics, log {worker.log_path}")
        before = worker.wait_for(lambda m: True, timeout=60)

        step(f"4/5 replaying {path}")
        dataset = read_dataset(path, limit=limit)
        say(f"  {len(dataset.events):,} events ({dataset.format}), {len(dataset.bad_rows)} unreadable rows, "
            f"spanning {dataset.span_ms / 1000:,.0f} s of shop time; plus {len(MALFORMED)} malformed messages")
        producer = EventProducer(settings, validate=False)
        bar = tqdm(total=len(dataset.events), unit="ev", unit_scale=True, desc="  replay", disable=None)
        result = replay_events(dataset.events, producer, rate=rate, timestamps="wallclock", progress=bar.update)
        bar.close()
        for raw in MALFORMED:
            producer.send_raw(b"demo", raw)
        producer.flush()
        say(f"  sent {result.sent:,} events in {result.seconds:.1f} s ({result.rate:,.0f} ev/s), "
            f"{result.delivered:,} acknowledged")

        step("5/5 waiting for the worker to apply every event")
        total = len(dataset.events) + len(MALFORMED)
        key_done = ("fusionrec_worker_events_total", "fusionrec_worker_duplicates_skipped_total",
                    "fusionrec_worker_dead_letter_total")

        def handled(m) -> float:
            return sum(m[k] - before[k] for k in key_done)

        bar = tqdm(total=total, unit="ev", unit_scale=True, desc="  worker", disable=None)
        progress = {"n": 0.0}

        def show(m) -> None:
            if m["fusionrec_worker_batch_failures_total"]:
                raise RuntimeError(f"the worker is failing batches; see {worker.log_path}")
            done = handled(m)
            bar.update(done - progress["n"])
            progress["n"] = done

        begun = time.perf_counter()
        metrics = worker.wait_for(lambda m: handled(m) >= total, timeout=900, on_poll=show)
        bar.close()
        seconds = time.perf_counter() - begun
        applied = metrics["fusionrec_worker_events_total"] - before["fusionrec_worker_events_total"]
        say(f"  applied {applied:,.0f} events, skipped "
            f"{metrics['fusionrec_worker_duplicates_skipped_total']:,.0f} duplicates, dead-lettered "
            f"{metrics['fusionrec_worker_dead_letter_total']:,.0f} malformed messages; "
            f"{total / seconds:,.0f} ev/s after the replay began")
        pace = "" if rate else " (the replay was unpaced, so this is mostly catch-up time; BENCHMARKS.md has " \
            "latency at a steady 1k ev/s)"
        latency = "fusionrec_worker_processing_latency_seconds"
        say(f"  event time → profile written: p50 {histogram_quantile(metrics, latency, 0.5) * 1000:.0f} ms, "
            f"p99 {histogram_quantile(metrics, latency, 0.99) * 1000:.0f} ms{pace}")
        worker.stop()  # writes the final snapshot
        worker = None
        _show_what_was_built(settings, dataset.events, say)
        ok = result.delivered == result.sent and handled(metrics) >= total
        say(f"\ndemo {'OK' if ok else 'FAILED'} in {time.perf_counter() - started:.1f} s")
        return ok
    finally:
        if worker is not None:
            worker.stop()
        if ours and not keep_running:
            if settings.broker_storage == "memory":  # the events are gone with the broker: so goes their state
                rebuild_state(settings)
            stopped = stack.down()
            say(f"stopped the embedded stack ({', '.join(stopped)}); rerun with --keep-running to keep it")


def _show_what_was_built(settings: Settings, events, say: Callable[[str], None]) -> None:
    from streams.state import SnapshotStore

    client = redis.Redis.from_url(settings.redis_url, **settings.redis_kwargs())
    profiles = ProfileStore(client, prefix=settings.redis_prefix)
    states = {state.partition: state for state in SnapshotStore(client, settings, settings.topic_events).load_all()}
    busiest: dict[str, int] = {}
    for event in events:
        busiest[event.user_id] = busiest.get(event.user_id, 0) + 1
    users = sorted(busiest, key=lambda u: (-busiest[u], u))[:2]
    say(f"\nwhat the worker built: {len(states)} partition snapshots in Redis")
    for user in users:
        profile = profiles.get(user)
        say(f"\n  user {user}: {sum(profile.counts.values())} events "
            f"({', '.join(f'{k}={v}' for k, v in sorted(profile.counts.items()))}); recent "
            f"{profile.recent_items[:4]}; bought {profile.bought_items[:3]}")
        # The user's partition is the one whose recent-items model knows them.
        home = next((s for s in states.values() if s.models["recent"].candidates(user, 1)), None)
        for name, model in (home.models.items() if home else ()):
            top = model.candidates(user, 3)
            shown = ", ".join(f"{item} ({score:.2f})" for item, score in top) or "—"
            say(f"    {name:<9} {shown}")
    client.close()
