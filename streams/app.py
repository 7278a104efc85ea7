"""The stream worker: the Faust app, built in this one module, and its thin agent, timer and rebalance hooks.

The agent receives whole partition batches (:mod:`fusionrec.streams.batching`) and hands each to
:class:`~fusionrec.streams.processor.BatchProcessor` on a single dedicated thread, which owns all model state: the event
loop stays free for Faust (timers, rebalances, the web server), and batches, snapshots and rebalance hand-overs
never run at the same time. The snapshots are the position of record: a newly assigned partition resumes just
after its snapshot (or at the start without one), and offsets are committed to Kafka only up to the snapshots,
for tools that read group lag.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faust
import redis
import torch
from faust.types import TP

from fusionrec.contracts.settings import Settings
from fusionrec.stores.profiles import ProfileStore
from fusionrec.streams.batching import BatchingApp, BatchSchema, RecordBatch
from fusionrec.streams.metrics import WorkerMetrics
from fusionrec.streams.processor import MAX_USERS_PER_REFRESH, RANK_BATCH, BatchProcessor
from fusionrec.streams.publisher import RecommendationPublisher
from fusionrec.streams.state import SnapshotStore, build_ranker

__all__ = ["Worker", "create_worker", "faust_credentials", "tune_gc"]

log = logging.getLogger("fusionrec.worker")

#: How often the bandit's weights are logged (they go to Redis and Prometheus every snapshot interval).
WEIGHTS_LOG_INTERVAL_S = 60.0


def tune_gc() -> None:
    """The models hold millions of small objects, and the default GC threshold rescans them every few hundred
    allocations on the hot path (~15% of the time): collect young objects 100x less often."""
    gc.set_threshold(100_000, 50, 1000)


def faust_credentials(settings: Settings) -> dict:
    """Faust's ``broker_credentials`` for the configured Kafka security settings."""
    kwargs = settings.aiokafka_kwargs()
    context = kwargs.get("ssl_context")
    if settings.kafka.security_protocol.startswith("SASL"):
        return {
            "broker_credentials": faust.SASLCredentials(
                username=kwargs["sasl_plain_username"],
                password=kwargs["sasl_plain_password"],
                mechanism=settings.kafka.sasl_mechanism,
                ssl_context=context,
            )
        }
    if context is not None:
        return {"broker_credentials": faust.SSLCredentials(context)}
    return {}


@dataclass
class Worker:
    """The Faust app with the objects its agent works with."""

    app: BatchingApp
    processor: BatchProcessor
    executor: ThreadPoolExecutor
    settings: Settings


def create_worker(settings: Settings, metrics: WorkerMetrics | None = None) -> Worker:
    """Build the Faust app, its topics, agent, snapshot timer and rebalance hooks from ``settings``."""
    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = BatchingApp(
        settings.worker.group,
        batched_topics={settings.topic.events},
        fetch_max_wait_ms=settings.kafka.fetch_wait_max_ms,
        topic_disable_leader=True,
        topic_allow_declare=False,
        store="memory://",
        datadir=str(settings.state_dir / "faust"),
        **settings.faust_app_kwargs(),
        **faust_credentials(settings),
    )
    events = app.topic(settings.topic.events, schema=BatchSchema(), internal=False)
    dead_letters = app.topic(settings.topic.dead_letter, key_serializer="raw", value_serializer="raw", internal=False)

    client = redis.Redis.from_url(settings.redis.url, **settings.redis.client_kwargs())
    ranker = build_ranker(settings.ranker)
    if ranker.device.type == "cpu" and settings.ranker.threads:
        torch.set_num_threads(settings.ranker.threads)
    log.info(
        "ranker: top %d of %d candidates per source, category cap %d, device %s (%d threads), every %d ms",
        settings.ranker.k,
        settings.ranker.candidates,
        settings.ranker.category_cap,
        ranker.device,
        torch.get_num_threads(),
        settings.ranker.interval_ms,
    )
    processor = BatchProcessor(
        settings,
        ProfileStore.from_settings(settings, client),
        SnapshotStore(client, settings, settings.topic.events, ranker),
        metrics,
        RecommendationPublisher(settings, client, metrics),
    )
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusionrec-state")
    worker = Worker(app, processor, executor, settings)

    async def on_state_thread(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def allow_commits(snapshotted: dict[int, int]) -> None:
        for partition, offset in snapshotted.items():
            if offset >= 0:
                app.consumer.limit_commit(TP(settings.topic.events, partition), offset + 1)

    async def position_of(tp: TP) -> int:
        return await on_state_thread(processor.snapshots.position, tp.partition)

    app.fusionrec_position_of = position_of

    async def process_until_done(batch: RecordBatch):
        """Process ``batch``, retrying with backoff while it fails: Faust acknowledges an event whose agent
        crashes, so a failure must never leave the loop. Retrying is safe: profiles are deduplicated and models
        skip offsets they have learned."""
        delay = 0.5
        while True:
            try:
                return await on_state_thread(processor.process, batch)
            except Exception:
                log.exception(
                    "batch %d..%d of partition %d failed; retrying in %.1f s",
                    batch.first_offset,
                    batch.last_offset,
                    batch.partition,
                    delay,
                )
                if metrics:
                    metrics.batch_failures.inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    @app.agent(events, name="fusionrec-events")
    async def process_events(stream):
        batch: RecordBatch
        async for batch in stream:
            outcome = await process_until_done(batch)
            if outcome.dead_letters:
                pending = [await dead_letters.send(key=key, value=value) for key, value in outcome.dead_letters]
                await asyncio.gather(*pending)  # delivered before this batch can be acknowledged

    async def best_effort(fn, what: str):
        """Run ``fn`` on the state thread; log a failure (Redis down, say) instead of crashing the app: lists and
        weights are derived data, rewritten on the next tick."""
        try:
            return await on_state_thread(fn)
        except Exception as exc:  # noqa: BLE001
            log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
            return None

    @app.timer(settings.worker.snapshot_interval_s)
    async def snapshot_partitions():
        allow_commits(await on_state_thread(processor.snapshot_in_background))
        report = await best_effort(processor.publish_weights, "writing the fusion weights to Redis")
        loop_time = asyncio.get_running_loop().time()
        if report and loop_time - weights_logged[0] >= WEIGHTS_LOG_INTERVAL_S:
            weights_logged[0] = loop_time
            for partition, entry in sorted(report.items()):
                log.info(
                    "fusion weights p%d (v%d, %d rewards): %s",
                    partition,
                    entry["version"],
                    entry["rewards"],
                    "; ".join(
                        f"{seg} " + " ".join(f"{s}={w:.2f}" for s, w in ws.items())
                        for seg, ws in entry["weights"].items()
                    ),
                )

    weights_logged = [float("-inf")]

    @app.task
    async def refresh_recommendations():
        """Every ranker interval, rank and publish the lists of users whose state changed, off the event loop.

        One slice of ``RANK_BATCH`` users per turn of the state thread, so batches waiting for it run in between
        (and the users they change join this tick's later slices). The interval runs from the start of one tick to
        the next: a Faust timer sleeps the whole interval *after* each run, which would add the refresh's own time
        to every list's wait, and more users per tick make that time longer still.
        """
        loop = asyncio.get_running_loop()
        interval = settings.ranker.interval_ms / 1000
        while not app.should_stop:
            began = loop.time()
            budget = MAX_USERS_PER_REFRESH
            try:
                while budget > 0:
                    done = await on_state_thread(processor.refresh, min(RANK_BATCH, budget))
                    budget -= done
                    if done < RANK_BATCH:
                        break
            except Exception:
                log.exception("ranker refresh failed")
            await app.sleep(max(interval - (loop.time() - began), 0.0))

    @app.on_partitions_revoked.connect
    async def hand_over(app, revoked, **kwargs):  # noqa: ARG001 - faust signal signature
        partitions = [tp.partition for tp in revoked if tp.topic == settings.topic.events]
        if metrics:
            metrics.assigned.set(0)
        if partitions:
            allow_commits(await on_state_thread(processor.snapshot, partitions))
            await on_state_thread(processor.drop, partitions)
            log.info("handed over partitions %s", partitions)

    @app.on_partitions_assigned.connect
    async def count_assigned(app, assigned, **kwargs):  # noqa: ARG001 - faust signal signature
        mine = sorted(tp.partition for tp in assigned if tp.topic == settings.topic.events)
        if metrics:
            metrics.assigned.set(len(mine))
        log.info("assigned partitions %s", mine)

    @app.on_before_shutdown.connect
    async def final_snapshot(app, **kwargs):  # noqa: ARG001
        await best_effort(processor.refresh, "the last ranker refresh")
        if processor.publisher is not None:
            await best_effort(processor.publisher.flush, "flushing the last lists")
        allow_commits(await on_state_thread(processor.snapshot))
        await best_effort(processor.publish_weights, "writing the final fusion weights")
        log.info("final snapshot written")

    return worker
