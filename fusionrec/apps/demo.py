"""``fusionrec demo``: the whole pipeline on the embedded stack, narrated.

Starts the broker and Redis, creates the topics, starts a stream worker, replays a real dataset into the events
topic (plus a few malformed messages, to show the dead-letter path), waits until the worker has applied every
event and published the lists of the users they changed, then shows what it built: throughput, latency and
freshness, profiles, each recommender's list and the published fused list with its attributions for a few users,
and the bandit's fusion weights per segment. Stops what it started unless asked to keep it running.
"""

from __future__ import annotations

import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import redis
from tqdm import tqdm

from fusionrec.apps.demo_report import Monitor, freshness_buckets, live_table, write_report
from fusionrec.apps.serve.child import ServerChild
from fusionrec.consumers.client import RecommendationStore, format_recommendation
from fusionrec.contracts.privacy import Pseudonymiser
from fusionrec.contracts.settings import Settings
from fusionrec.infra.admin import ensure_topics
from fusionrec.infra.stack import Stack
from fusionrec.producers.datasets import read_dataset
from fusionrec.producers.producer import EventProducer
from fusionrec.producers.replay import replay_events
from fusionrec.stores.client import connect
from fusionrec.stores.profiles import ProfileStore
from fusionrec.streams.child import WorkerChild
from fusionrec.streams.metrics import histogram_quantile

__all__ = ["run_demo"]

MALFORMED = [b'{"event_id": "bad-1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 1}', b"not json"]


#: The demo's own Redis namespace, cleared at the start of every run: a system Redis outlives the embedded
#: memory broker, and state from an earlier run would name offsets the fresh topic does not have.
DEMO_PREFIX = "fr-demo:"
#: Items of each fused list shown (the rest are counted).
SHOWN_ITEMS = 8
#: How long the demo waits for the ranker to catch up after the replay: an unpaced replay of the whole Taobao slice
#: changes 66k users, about 20 s of ranking on 2 cores, so the demo shows what is published by then.
ITEM_SIDE_WAIT_S = 15.0
LISTS_WAIT_S = 3.0
#: The demo's snapshot interval, which is also how often the worker writes the fusion weights the live view shows.
WEIGHTS_INTERVAL_S = 3.0
FRESHNESS = "fusionrec_recommendations_freshness_seconds"
#: The fastest the demo paces a replay by default: what one worker ranking nine sources keeps up with through the
#: whole Taobao slice on a 2-core machine that also runs the broker, Redis, the API and the online evaluation
#: (README, "make demo": at 1,000 events/s it fell behind once the models had grown, 45 s in; at 650 it kept up).
DEMO_MAX_RATE = 650.0


def run_demo(
    settings: Settings,
    path: Path,
    *,
    rate: float | None,
    limit: int | None,
    keep_running: bool,
    say: Callable[[str], None],
    step: Callable[[str], None],
    minutes: float = 1.0,
    max_rate: float = DEMO_MAX_RATE,
    out: Path | None = None,
    live: bool | None = None,
) -> bool:
    """Run the demo; return True when every event was accounted for.

    ``rate``: events/s (0: unpaced); by default the file is paced to take ``minutes``, at most ``max_rate``
    events/s (0: no limit), so that the worker keeps up and the freshness shown is a live shop's. ``out``: where
    the report goes (default ``build/demo``). ``live``: the live view (default: when stdout is a terminal; else a
    line every 10 s)."""
    from fusionrec.consumers.online_eval import OnlineEvaluator
    from fusionrec.consumers.online_eval_service import run_online_eval
    from fusionrec.streams.rebuild import rebuild_state

    settings = settings.replace(redis_prefix=DEMO_PREFIX, worker_snapshot_interval_s=WEIGHTS_INTERVAL_S)
    out = out if out is not None else Path("build/demo")
    stack = Stack(settings)
    started = time.perf_counter()
    step("1/7 starting the embedded stack (Tansu broker, Redis)")
    services = stack.up()
    for svc in services:
        say(f"  {svc.name:<7} {svc.state:<8} {svc.address}" + (f" pid {svc.pid}" if svc.pid else ""))
    ours = any(svc.state == "running" for svc in services)
    worker = None
    stop_eval = threading.Event()
    evaluation: dict = {}
    eval_thread = None
    monitor = None
    api = None
    try:
        cleared = rebuild_state(settings).keys_deleted
        if cleared:
            say(f"  cleared {cleared:,} Redis keys of an earlier demo run (namespace {DEMO_PREFIX!r})")
        step("2/7 creating topics")
        for state in ensure_topics(settings):
            say(f"  {state.spec.name:<28} {'created' if state.created else 'exists':<8} partitions={state.partitions}")

        step("3/7 starting a stream worker, the online evaluation and the serving API")
        log_dir = Path(tempfile.mkdtemp(prefix="fusionrec-demo-"))
        worker = WorkerChild(settings, log_dir / "worker.log")
        say(f"  worker pid {worker.pid}, metrics on 127.0.0.1:{worker.metrics_port}/metrics, log {worker.log_path}")
        # ready: partitions assigned and restored (else the first seconds of the replay queue behind the group join)
        before = worker.wait_for(lambda metrics: metrics.get("fusionrec_worker_ready", 0) >= 1, timeout=60)
        k = settings.ranker.k
        evaluator, lock = OnlineEvaluator(k), threading.Lock()

        def evaluate() -> None:
            evaluation.update(run_online_eval(settings, k=k, stop=stop_eval, evaluator=evaluator, lock=lock))

        eval_thread = threading.Thread(target=evaluate, name="online-eval", daemon=True)
        eval_thread.start()
        say(f"  online evaluation: each event judged against the list its user was being served (HR@{k})")
        api = ServerChild(settings, log_dir / "serve.log").wait_live()
        say(
            f"  serving API pid {api.pid} at {api.url} (live page /, GET /v1/users/{{user}}/recommendations, "
            f"schema /openapi.json), log {api.log_path}"
        )

        dataset = read_dataset(path, limit=limit)
        events = dataset.events
        if rate is None:
            rate = len(events) / (60 * minutes) if events else 0.0
            if max_rate and rate > max_rate:
                say(
                    f"  pacing at {max_rate:,.0f} events/s, what one worker keeps up with on this machine "
                    f"(--max-rate), not {rate:,.0f}: the replay takes {len(events) / max_rate / 60:.1f} minutes"
                )
                rate = max_rate
        step(f"4/7 replaying {path} " + (f"at {rate:,.0f} events/s" if rate else "unpaced"))
        say(
            f"  {len(events):,} events ({dataset.format}), {len(dataset.bad_rows)} unreadable rows, spanning "
            f"{dataset.span_ms / 1000:,.0f} s of shop time, stamped as they are sent; plus {len(MALFORMED)} "
            "malformed messages"
        )
        producer = EventProducer(settings, validate=False)
        sent = {"n": 0}
        replayed: dict = {}

        def replay() -> None:
            replayed["result"] = replay_events(
                events,
                producer,
                rate=rate or None,
                timestamps="wallclock",
                progress=lambda n: sent.__setitem__("n", sent["n"] + n),
            )

        total = len(events) + len(MALFORMED)
        key_done = (
            "fusionrec_worker_events_total",
            "fusionrec_worker_duplicates_skipped_total",
            "fusionrec_worker_dead_letter_total",
        )

        def handled(m) -> float:
            return sum(m[k] - before[k] for k in key_done)

        def check(m) -> None:
            if m["fusionrec_worker_batch_failures_total"]:
                raise RuntimeError(f"the worker is failing batches; see {worker.log_path}")

        def malformed_then_close() -> None:
            try:
                replay()
                for raw in MALFORMED:
                    producer.send_raw(b"demo", raw)
                producer.close()
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                replayed["error"] = exc

        monitor = Monitor(settings, worker.metrics, evaluator, lock, lambda: sent["n"])
        sender = threading.Thread(target=malformed_then_close, name="replay", daemon=True)
        sender.start()
        deadline = time.monotonic() + 900
        # Watched until the worker has handled every event: what it does after the replay ends is part of the run.
        _watch(
            monitor,
            lambda: (
                time.monotonic() < deadline
                and (sender.is_alive() or ("error" not in replayed and handled(monitor.last_metrics) < total))
            ),
            len(events),
            k,
            say,
            live,
            check,
        )
        sender.join()
        if "error" in replayed:
            raise RuntimeError(f"the replay failed: {replayed['error']}")
        result = replayed["result"]
        say(
            f"  sent {result.sent:,} events in {result.seconds:.1f} s ({result.rate:,.0f} ev/s), "
            f"{result.delivered:,} acknowledged"
        )

        step("5/7 waiting for the worker to apply every event")
        begun = time.perf_counter()
        metrics = worker.wait_for(lambda m: handled(m) >= total, timeout=60, on_poll=check)
        applied = metrics["fusionrec_worker_events_total"] - before["fusionrec_worker_events_total"]
        say(
            f"  applied {applied:,.0f} events, skipped "
            f"{metrics['fusionrec_worker_duplicates_skipped_total']:,.0f} duplicates, dead-lettered "
            f"{metrics['fusionrec_worker_dead_letter_total']:,.0f} malformed messages, the last "
            f"{monitor.samples[-1].t - result.seconds + time.perf_counter() - begun:,.1f} s after the last was sent"
        )
        latency = "fusionrec_worker_processing_latency_seconds"
        say(
            f"  event time → profile written: p50 {histogram_quantile(metrics, latency, 0.5) * 1000:,.0f} ms, "
            f"p99 {histogram_quantile(metrics, latency, 0.99) * 1000:,.0f} ms"
            + ("" if rate else " (the replay was unpaced, so this is mostly catch-up time)")
        )

        step(
            f"6/7 waiting (at most {LISTS_WAIT_S:.0f} s) for the ranker to publish the lists of the users the "
            "events changed"
        )
        metrics = _wait_for_lists(worker, before, metrics, applied, say, paced=bool(rate))
        _wait_for_item_side(worker, settings, say)
        final = monitor.sample()
        stop_eval.set()
        eval_thread.join(timeout=30)
        worker.stop()  # ranks the changed users once more, writes the final snapshot and the final fusion weights
        worker = None
        _show_what_was_built(settings, events, say)
        served = _show_served(api, events, say)
        api.stop()
        api = None
        ok = result.delivered == result.sent and handled(metrics) >= total and served

        step("7/7 the report")
        report = {
            "ok": ok,
            "data": str(path),
            "events": len(events),
            "rate": round(rate, 1),
            "seconds": round(time.perf_counter() - started, 1),
            "k": k,
            "freshness_ms": {
                "p50": histogram_quantile(metrics, FRESHNESS, 0.5) * 1000,
                "p99": histogram_quantile(metrics, FRESHNESS, 0.99) * 1000,
            },
            "published": metrics["fusionrec_recommendations_published_total"],
            "online": evaluation or None,
            "weights": final.weights,
            "rewards": final.rewards,
        }
        for written in write_report(out, report, monitor.samples, freshness_buckets(metrics)):
            say(f"  {written}")
        _say_online(evaluation, say)
        say(f"\ndemo {'OK' if ok else 'FAILED'} in {time.perf_counter() - started:.1f} s")
        return ok
    finally:
        stop_eval.set()
        if eval_thread is not None:
            eval_thread.join(timeout=30)
        if monitor is not None:
            monitor.close()
        if api is not None:
            api.stop()
        if worker is not None:
            worker.stop()
        if ours and not keep_running:
            if settings.broker.storage == "memory":  # the events are gone with the broker: so goes their state
                rebuild_state(settings)
            stopped = stack.down()
            say(f"stopped the embedded stack ({', '.join(stopped)}); rerun with --keep-running to keep it")


def _watch(monitor: Monitor, running: Callable[[], bool], total: int, k: int, say, live: bool | None, check) -> None:
    """Sample twice a second while ``running`` (``check`` sees each sample's metrics): a live view on a terminal,
    else a line every 10 s."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if live is None:
        live = console.is_terminal
    if live:
        with Live(live_table(monitor.sample(), total, k), console=console, refresh_per_second=4) as view:
            while running():
                time.sleep(0.5)
                view.update(live_table(monitor.sample(), total, k))
                check(monitor.last_metrics)
        return
    last = 0.0
    while running():
        time.sleep(0.5)
        sample = monitor.sample()
        check(monitor.last_metrics)
        if sample.t - last >= 10:
            last = sample.t
            fused = sample.hit_rates.get("fused")
            say(
                f"  {sample.t:5.0f} s  sent {sample.sent:,}  applied {sample.applied:,.0f}  lists "
                f"{sample.published:,.0f}  freshness p99 {sample.freshness_p99_ms or 0:,.0f} ms  online HR@{k} "
                f"fused {'—' if fused is None else f'{fused:.3f}'}  rewards {sample.rewards:,}"
            )


def _show_served(api: ServerChild, events, say: Callable[[str], None]) -> bool:
    """What the shop's front end gets from the serving API for the busiest user; True when it answered."""
    counts: dict[str, int] = {}
    for event in events:
        counts[event.user_id] = counts.get(event.user_id, 0) + 1
    user = max(counts, key=lambda u: (counts[u], u)) if counts else "nobody"
    url = f"{api.url}/v1/users/{urllib.parse.quote(user, safe='')}/recommendations?k=5"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = orjson.loads(response.read())
    except OSError as exc:
        say(f"\n  serving API: GET {url} failed: {exc}")
        return False
    items = ", ".join(str(item["item_id"]) for item in body.get("items", []))
    say(
        f"\n  serving API: GET /v1/users/{user}/recommendations?k=5 → {items or 'no items'}"
        + (" (the fallback: no list yet)" if body.get("fallback") else " (the user's fused list)")
    )
    return True


def _say_online(evaluation: dict, say: Callable[[str], None]) -> None:
    variants = evaluation.get("variants") or {}
    rated = sorted(((v, c["hit_rate"]) for v, c in variants.items() if c["hit_rate"] is not None), key=lambda x: -x[1])
    if not rated:
        return
    say(
        f"  online hit rate@{evaluation.get('k', '')} over {max(c['targets'] for c in variants.values()):,} judged "
        f"events: " + ", ".join(f"{v} {r:.4f}" for v, r in rated)
    )


def _wait_for_item_side(worker: WorkerChild, settings: Settings, say: Callable[[str], None]) -> None:
    """Wait (at most ``ITEM_SIDE_WAIT_S``) until the shared item side has applied all but the newest sync tick: in
    an unpaced replay it trails the slowest partition until the last events are in."""
    if not settings.model.item_sync_ms:
        return
    bound = 2 * settings.model.item_sync_ms / 1000
    deadline = time.perf_counter() + ITEM_SIDE_WAIT_S
    lag = float("inf")
    while time.perf_counter() < deadline:
        lag = (worker.metrics() or {}).get("fusionrec_item_side_lag_seconds", float("inf"))
        if lag <= bound:
            break
        time.sleep(0.3)
    applied = (worker.metrics() or {}).get("fusionrec_item_side_records_applied_total", 0)
    say(
        f"  shared item side: {applied:,.0f} records from every partition applied, {lag:.1f} s of event time behind "
        f"the newest event (the newest {settings.model.item_sync_ms} ms tick waits for a later event)"
    )


def _wait_for_lists(worker: WorkerChild, before, metrics, applied: float, say: Callable[[str], None], *, paced: bool):
    """Wait until every applied event is reflected in a published list, or ``LISTS_WAIT_S``; report; return the
    worker's latest metrics."""
    from fusionrec.streams.refresh import MAX_USERS_PER_REFRESH

    reflected_key = f"{FRESHNESS}_count"
    bar = tqdm(total=int(applied), unit="ev", unit_scale=True, desc="  reflected in a list", disable=None)
    progress = {"n": 0.0}
    begun = time.perf_counter()
    deadline = begun + LISTS_WAIT_S
    while True:
        metrics = worker.metrics() or metrics  # empty when a scrape fails: keep the last one
        reflected = metrics[reflected_key] - before[reflected_key]
        bar.update(reflected - progress["n"])
        progress["n"] = reflected
        if reflected >= applied or time.perf_counter() >= deadline:
            break
        time.sleep(0.2)
    bar.close()
    seconds = time.perf_counter() - begun
    published_key = "fusionrec_recommendations_published_total"
    published = metrics[published_key] - before[published_key]
    lists = {
        key: value - before[key] for key, value in metrics.items() if key.startswith("fusionrec_fusion_lists_total{")
    }
    explored = sum(v for key, v in lists.items() if 'action="boost"' in key)
    holdout = sum(v for key, v in lists.items() if 'arm="fixed"' in key)
    if reflected >= applied:
        say(
            f"  published {published:,.0f} lists (topic and Redis): every applied event is in its user's list, "
            f"{seconds:.1f} s after the last one was applied"
        )
    else:
        say(
            f"  published {published:,.0f} lists (topic and Redis) so far, reflecting {reflected:,.0f} of "
            f"{applied:,.0f} events: ranking every user of an unpaced replay takes the ranker longer than the demo "
            f"waits (docs/ranking.md); the worker ranks up to {MAX_USERS_PER_REFRESH:,} more as it stops"
        )
    say(
        f"  {100 * explored / max(published, 1):.1f} % of the lists explored (one source boosted), "
        f"{100 * holdout / max(published, 1):.1f} % in the fixed-weight holdout; event time → list published: p50 "
        f"{histogram_quantile(metrics, FRESHNESS, 0.5) * 1000:,.0f} ms, p99 "
        f"{histogram_quantile(metrics, FRESHNESS, 0.99) * 1000:,.0f} ms ({'' if paced else 'catch-up again; '}"
        "BENCHMARKS.md has freshness at a steady 1k ev/s)"
    )
    return metrics


def _show_what_was_built(settings: Settings, events, say: Callable[[str], None]) -> None:
    from fusionrec.streams.item_side import load_replica
    from fusionrec.streams.state import SnapshotStore

    client = connect(settings.redis)
    profiles = ProfileStore(client, settings.redis.keys)
    snapshots = SnapshotStore(client, settings, settings.topic.events)
    item_side = load_replica(settings, client)  # shared by every partition: joined with each user's own state
    keys = settings.redis.keys
    partitions = sorted(keys.partition_of(key) for key in client.scan_iter(match=keys.snapshots(settings.topic.events)))
    busiest: dict[str, int] = {}
    for event in events:
        busiest[event.user_id] = busiest.get(event.user_id, 0) + 1
    # The busiest users whose list is published (an unpaced replay may not have every list yet).
    candidates = sorted(busiest, key=lambda u: (-busiest[u], u))[:200]
    pseudonyms = Pseudonymiser.from_settings(settings)
    hidden = pseudonyms.user  # the name the worker stores a user under (the id itself without a key)
    lists = {
        user: rec
        for user, rec in RecommendationStore(client, keys, pseudonyms).get_many(candidates).items()
        if rec is not None
    }
    users = [user for user in candidates if user in lists][:2] or candidates[:2]
    shared = (
        ""
        if item_side is None
        else f", and the item side all partitions share ({item_side.models['popular'].n_items:,} items, "
        f"{item_side.records_applied:,} records from every partition)"
    )
    say(f"\nwhat the worker built: {len(partitions)} partition snapshots in Redis{shared}")
    states: dict[int, object] = {}
    for user in users:
        profile = profiles.get(hidden(user))
        say(
            f"\n  user {user}: {sum(profile.counts.values())} events "
            f"({', '.join(f'{k}={v}' for k, v in sorted(profile.counts.items()))}); recent "
            f"{profile.recent_items[:4]}; bought {profile.bought_items[:3]}"
        )
        rec = lists.get(user)
        # The user's partition: the list names it; without a list, the one whose recent-items model knows the user.
        named = rec.partition if rec is not None else None
        for partition in [named] if named is not None else partitions:
            if partition not in states:
                states[partition] = snapshots.load(partition)
            if states[partition].models["recent"].candidates(hidden(user), 1):
                home = states[partition]
                break
        else:
            home = None
        say("    each source's own top 3 (its score):")
        models = {} if home is None else home.models if item_side is None else item_side.views(home.models)
        for name, model in models.items():
            top = model.candidates(hidden(user), 3)
            shown = ", ".join(f"{item} ({score:.2f})" for item, score in top) or "—"
            say(f"      {name:<9} {shown}")
        if rec is None:
            say("    no published list yet")
            continue
        say(f"    published fused list ({keys.recommendation(hidden(user))}), each item's score split by source:")
        lines = format_recommendation(rec).splitlines()
        more = len(lines) - 1 - SHOWN_ITEMS
        for line in lines[: 1 + SHOWN_ITEMS]:
            say(f"      {line}")
        if more > 0:
            say(f"      … {more} more")
    _show_weights(settings, client, say)
    client.close()


def _show_weights(settings: Settings, client: redis.Redis, say: Callable[[str], None]) -> None:
    """The bandit's weights per segment, as the worker wrote them to Redis (mean over partitions)."""
    entries = [
        orjson.loads(client.get(key))
        for key in sorted(client.scan_iter(match=settings.redis.keys.all_weights(settings.topic.events)))
    ]
    if not entries:
        say("\n  no fusion weights in Redis")
        return
    sums: dict[str, dict[str, float]] = {}
    for entry in entries:
        for segment, weights in entry["weights"].items():
            for source, weight in weights.items():
                row = sums.setdefault(segment, {})
                row[source] = row.get(source, 0.0) + weight
    sources = list(next(iter(sums.values())))
    rewards = sum(entry["rewards"] for entry in entries)
    say(
        f"\n  fusion weights per segment (the bandit's exploit weights; mean of {len(entries)} partitions' "
        f"{settings.redis.keys.all_weights()} keys; learned from {rewards:,} rewarded events):"
    )
    say("    " + f"{'segment':<10}" + "".join(f"{source:>10}" for source in sources))
    for segment, row in sums.items():
        say("    " + f"{segment:<10}" + "".join(f"{row.get(s, 0.0) / len(entries):>10.3f}" for s in sources))
    if rewards < 100:
        say(
            "    (a reward is an event on an item of the list the user was being served: few users came back to "
            "their lists in this run, so the weights moved little; a longer or slower replay gives more)"
        )
    learned = [entry["learned"] for entry in entries if entry.get("learned")]
    if learned:
        ready = sum(bool(entry["ready"]) for entry in learned)
        shared = all(entry.get("shared") for entry in learned)
        count = learned[0]["lists_learned"] if shared else sum(entry["lists_learned"] for entry in learned)
        say(
            f"\n  learned ranker ({'one model shared by every partition' if shared else 'one per partition'}): "
            f"{count:,} labelled lists learned; serving in {ready} of {len(learned)} partitions"
            + ("" if ready else " (bandit fusion serves until it has learned enough)")
        )
