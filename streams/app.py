"""The stream worker: the Faust app, built in this one module, with its agent, timer, task and rebalance hooks.

:class:`Worker` holds the app, the single state thread and the components the hooks call into, and its methods are
the hooks; :func:`wire` connects them to the app, every Faust entry point in one place. The agent receives whole
partition batches (:mod:`fusionrec.streams.batching`) and hands each to the
:class:`~fusionrec.streams.apply.BatchApplier` on the state thread, which owns all model state
(:class:`~fusionrec.streams.state.PartitionRegistry`): the event loop stays free for Faust (timers, rebalances, the
web server), and batches, ranker slices (:class:`~fusionrec.streams.refresh.Refresher`), snapshots
(:class:`~fusionrec.streams.snapshots.Snapshotter`) and rebalance hand-overs never run at the same time. The
snapshots are the position of record: a newly assigned partition resumes just after its snapshot (or at the start
without one), and offsets are committed to Kafka only up to the snapshots, for tools that read group lag.

With a :class:`~fusionrec.streams.health.Health`, a task on the event loop beats it every second (``/livez``) and
sets the consumer lag per partition from what the consumer already knows (no request to the broker, nothing read
off the loop); the rebalance hooks make it ready (``/readyz``) once an assignment's partitions are restored.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import faust
import torch
from faust.types import TP, TopicT

from fusionrec.contracts.privacy import Pseudonymiser
from fusionrec.contracts.settings import Settings
from fusionrec.stores.client import connect
from fusionrec.stores.profiles import ProfileStore
from fusionrec.streams.apply import BatchApplier, BatchOutcome
from fusionrec.streams.batching import BatchingApp, BatchSchema, RecordBatch
from fusionrec.streams.dead_letters import deliver
from fusionrec.streams.epoch import CHECK_INTERVAL_S, Epoch
from fusionrec.streams.forget import Forgetter
from fusionrec.streams.health import Health
from fusionrec.streams.item_side import MAX_AHEAD_TICKS, ItemSideLink
from fusionrec.streams.metrics import WorkerMetrics
from fusionrec.streams.publisher import RecommendationPublisher
from fusionrec.streams.refresh import MAX_USERS_PER_REFRESH, RANK_BATCH, Refresher
from fusionrec.streams.rewind import RECHECK_S, TopicWatch, admin_identify
from fusionrec.streams.snapshots import Snapshotter
from fusionrec.streams.state import PartitionRegistry, SnapshotStore, build_item_side, build_ranker

__all__ = ["Worker", "create_worker", "faust_credentials", "lag_of", "tune_runtime", "wire"]

log = logging.getLogger("fusionrec.worker")

#: How often the bandit's weights are logged (they go to Redis and Prometheus every snapshot interval).
WEIGHTS_LOG_INTERVAL_S = 60.0
#: How often the event loop beats the liveness probe and the consumer lag is set.
OBSERVE_INTERVAL_S = 1.0
#: How often restoring an assignment that failed (Redis down) is tried again.
RESTORE_RETRY_S = 1.0
#: How long a thread may hold the GIL while another waits for it (:func:`sys.setswitchinterval`).
GIL_SWITCH_INTERVAL_S = 0.05


def tune_runtime() -> None:
    """The models hold millions of small objects, and the default GC threshold rescans them every few hundred
    allocations on the hot path (~15% of the time): collect young objects 100x less often."""
    gc.set_threshold(100_000, 50, 1000)
    # The worker's Python threads (the state thread, the event loop, Faust's consumer thread) share one GIL; at the
    # default 5 ms the state thread is made to hand it over 200 times a second while it ranks. 50 ms: the same
    # freshness run took 77-78 % of a core instead of 86-87 % (BENCHMARKS.md, "Freshness").
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


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


def lag_of(applied: int | None, highwater: int | None, fetched: int | None) -> int | None:
    """A partition's consumer lag: its end minus ``applied`` (the offset after the last applied batch), or None when
    either is unknown. The end is the high watermark the last fetch response reported, never less than ``fetched``
    (the offset after the last record fetched). Not ListOffsets "latest" (``end_offsets``), which Tansu answers with
    the newest batch's first offset + 1: 1 for 1,000 records produced in one batch, where the fetch said 1,000."""
    ends = [end for end in (highwater, fetched) if end is not None]
    if applied is None or not ends:
        return None
    return max(max(ends) - applied, 0)


@dataclass(eq=False, repr=False)
class Worker:
    """The Faust app and what its hooks work with; each hook is a method, connected to the app by :func:`wire`.

    Everything that touches model state runs on ``executor``, the single state thread.
    """

    app: BatchingApp
    topic: str  # the events topic's name
    dead_letters: TopicT
    partitions: PartitionRegistry
    applier: BatchApplier
    refresher: Refresher
    snapshotter: Snapshotter
    rank_interval_s: float
    metrics: WorkerMetrics | None = None
    health: Health | None = None
    executor: ThreadPoolExecutor = field(
        default_factory=partial(ThreadPoolExecutor, max_workers=1, thread_name_prefix="fusionrec-state")
    )
    #: The events topic's identity and offset bases (streams/rewind.py): a lost or recreated topic is detected and
    #: never a reason to skip its events. None: offsets are taken as they are (unit tests).
    watch: TopicWatch | None = None
    weights_logged: float = float("-inf")  # loop time the fusion weights were last logged
    paused: set[int] = field(default_factory=set)  # partitions paused because they ran ahead of the item side
    mine: set[int] = field(default_factory=set)  # the events partitions assigned now
    applied: dict[int, int] = field(default_factory=dict)  # partition -> offset after its last applied batch
    unrestored: tuple[list[int], int] | None = None  # an assignment whose restore failed, and its generation
    #: The worker state's epoch in Redis (streams/epoch.py): once ``epoch.lost``, no event is applied and no
    #: snapshot written. None: not checked (unit tests).
    epoch: Epoch | None = None
    restore_retry: float = float("-inf")  # loop time of the next retry of ``unrestored``

    # --- helpers -------------------------------------------------------------------------------------------------

    async def on_state_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @property
    def ready(self) -> bool:
        """False while the events topic is gone, recreated and not yet read, or behind the state (rewind.py)."""
        return self.watch is None or self.watch.ready

    def allow_commits(self, snapshotted: dict[int, int]) -> None:
        for partition, offset in snapshotted.items():
            if self.watch is not None:
                offset = self.watch.to_topic(partition, offset)
            if offset >= 0:
                self.app.consumer.limit_commit(TP(self.topic, partition), offset + 1)

    async def best_effort(self, fn: Callable[[], Any], what: str) -> Any:
        """Run ``fn`` on the state thread; log a failure (Redis down, say) instead of crashing the app: lists and
        weights are derived data, rewritten on the next tick."""
        try:
            return await self.on_state_thread(fn)
        except Exception as exc:  # noqa: BLE001
            log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
            return None

    async def apply_until_done(self, batch: RecordBatch) -> BatchOutcome:
        """Apply ``batch``, retrying with backoff while it fails: Faust acknowledges an event whose agent
        crashes, so a failure must never leave the loop. Retrying is safe: profiles are deduplicated and models
        skip offsets they have learned."""
        delay = 0.5
        while True:
            try:
                return await self.on_state_thread(self.applier.apply, batch)
            except Exception:
                log.exception(
                    "batch %d..%d of partition %d failed; retrying in %.1f s",
                    batch.first_offset,
                    batch.last_offset,
                    batch.partition,
                    delay,
                )
                if self.metrics:
                    self.metrics.batch_failures.inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def log_weights(self, report: dict[int, dict]) -> None:
        """Log the fusion weights, at most once every ``WEIGHTS_LOG_INTERVAL_S``."""
        loop_time = asyncio.get_running_loop().time()
        if not report or loop_time - self.weights_logged < WEIGHTS_LOG_INTERVAL_S:
            return
        self.weights_logged = loop_time
        for partition, entry in sorted(report.items()):
            learned = entry.get("learned")
            log.info(
                "fusion weights p%d (v%d, %d rewards): %s%s",
                partition,
                entry["version"],
                entry["rewards"],
                "; ".join(
                    f"{seg} " + " ".join(f"{s}={w:.2f}" for s, w in ws.items()) for seg, ws in entry["weights"].items()
                ),
                ""
                if learned is None
                else f"; learned ranker {'serving' if learned['ready'] else 'warming up'} "
                f"({learned['lists_learned']:,} lists learned)",
            )

    def lag(self) -> dict[int, int]:
        """Records not applied yet per assigned partition (:func:`lag_of`), from what the consumer knows already: no
        broker request, nothing that waits on the consumer's thread; partitions not fetched yet are left out."""
        out = {}
        consumer = self.app.consumer
        for partition in self.mine:
            lag = lag_of(
                self.applied.get(partition), self.highwater(partition), consumer.fetched(TP(self.topic, partition))
            )
            if lag is not None:
                out[partition] = lag
        return out

    async def restore(self, partitions: list[int], generation: int) -> None:
        """Restore the assigned partitions' state now (a partition without events is then known, and closed when
        quiet, instead of holding the item side back); ready once done. A failure is retried by the ranker task."""
        try:
            await self.on_state_thread(self.partitions.hold, partitions)
        except Exception as exc:  # noqa: BLE001 - Redis down: not ready, retried
            log.warning("restoring partitions %s failed: %s: %s", partitions, type(exc).__name__, exc)
            self.unrestored = (partitions, generation)
            self.restore_retry = asyncio.get_running_loop().time() + RESTORE_RETRY_S
            return
        self.unrestored = None
        if self.health is not None and self.health.restored(generation):
            log.info("ready: partitions %s restored", partitions)

    def highwater(self, partition: int) -> int | None:
        """The events partition's high watermark as the consumer last fetched it (None: not fetched, or not ours)."""
        try:
            end = self.app.consumer.highwater(TP(self.topic, partition))
        except Exception:  # noqa: BLE001 - not assigned (a rebalance), or no consumer yet
            return None
        return end if end is None or self.watch is None else self.watch.to_state(partition, end)

    def next_offset(self, partition: int) -> int:
        """The state offset the partition's state continues at (state thread): in memory, or its snapshot."""
        state = self.partitions.states.get(partition)
        stored = self.snapshotter.store.position(partition)
        return stored if state is None else max(stored, state.offset + 1)

    def position(self, partition: int) -> int:
        """Where an assigned partition resumes on the topic (state thread): after its snapshot, once the topic's
        identity is checked (a recreated topic is read from its start)."""
        stored = self.snapshotter.store.position(partition)
        if self.watch is None:
            return stored
        self.watch.check({partition: self.next_offset(partition)})
        if self.watch.lost:  # gone: whatever comes back under this name is a new topic, read from its start
            return 0
        return max(self.watch.to_topic(partition, stored), 0)

    def verify(self, batch: RecordBatch) -> RecordBatch | None:
        """A batch that looks like a redelivery (state thread): check the topic is still the one the state was
        built from (rebasing it if it was recreated), then give the batch state offsets (None: not to be applied,
        see :meth:`TopicWatch.translate`)."""
        assert self.watch is not None
        self.watch.check({batch.partition: self.next_offset(batch.partition)}, max_age_s=RECHECK_S)
        return self.watch.translate(batch)

    def watch_topic(self) -> None:
        """The snapshot tick's check (state thread): the topic's identity, and whether any held partition's end
        went behind its state."""
        watch = self.watch
        if watch is None:
            return
        held = {partition: state.offset + 1 for partition, state in self.partitions.states.items()}
        if held or not watch.ready:
            watch.check(held)
        for partition, next_offset in held.items():
            try:
                end = self.app.consumer.highwater(TP(self.topic, partition))
            except Exception:  # noqa: BLE001 - not assigned any more
                continue
            if end is not None and end > 0:
                watch.check_end(partition, end, next_offset)

    # --- the hooks (see wire) ------------------------------------------------------------------------------------

    async def position_of(self, tp: TP) -> int:
        """Where an assigned partition resumes: just after its snapshot (the topic's identity checked first)."""
        position = await self.on_state_thread(self.position, tp.partition)
        self.applied[tp.partition] = position
        return position

    def suspicious(self, batch: RecordBatch) -> bool:
        """Whether a batch starts at or before what its partition's state has processed (a redelivery, or a topic
        that went back): read on the event loop, checked on the state thread."""
        state = self.partitions.states.get(batch.partition)
        return state is None or self.watch.to_state(batch.partition, batch.first_offset) <= state.offset  # type: ignore[union-attr]

    async def process_events(self, stream) -> None:
        """The agent: apply each partition batch; its dead letters are acknowledged by the broker before the batch
        can be."""
        batch: RecordBatch
        async for batch in stream:
            if self.epoch is not None and self.epoch.lost:
                await self.halt()
            last_on_topic = batch.last_offset  # before any rebase: the lag is in the topic's offsets
            if self.watch is not None:
                partition = batch.partition
                if self.suspicious(batch):
                    batch = await self.on_state_thread(self.verify, batch)
                else:
                    batch = self.watch.translate(batch)
                if batch is None:  # a recreated topic read from the old offsets: back to where it must go on
                    # on the consumer's own thread and loop (aiokafka is not thread-safe), Faust's read offset too
                    await self.app.consumer.seek_wait({TP(self.topic, partition): self.watch.resume_at(partition)})
                    continue
            outcome = await self.apply_until_done(batch)
            if batch.partition in self.mine:
                self.applied[batch.partition] = last_on_topic + 1
            if outcome.dead_letters:
                await deliver(self.dead_letters.send, outcome.dead_letters, self.metrics)

    async def halt(self) -> None:
        """Redis lost the state: apply nothing more (the batch in hand is never acknowledged) until shutdown."""
        log.error("not applying events: Redis lost the worker state (see above); waiting to be stopped")
        while not self.app.should_stop:
            await self.app.sleep(CHECK_INTERVAL_S)

    def has_state(self) -> bool:
        """Whether this worker holds state that Redis should have (read from the epoch's thread: a glance)."""
        if any(state.offset >= 0 for state in list(self.partitions.states.values())):
            return True
        return bool(getattr(self.partitions.item_side, "positions", None))

    async def watch_epoch(self) -> None:
        """The epoch task: check every ``CHECK_INTERVAL_S`` that Redis still holds the worker state (a ``GET`` on a
        thread of its own, so neither the loop nor the state thread waits for it)."""
        epoch = self.epoch
        failing = False
        while epoch is not None and not epoch.lost and not self.app.should_stop:
            try:
                await asyncio.to_thread(epoch.check)
                failing = False
            except Exception as exc:  # noqa: BLE001 - Redis down: an outage, reported by the batches; try again
                if not failing:
                    log.warning("checking the Redis epoch failed: %s: %s", type(exc).__name__, exc)
                failing = True
            await self.app.sleep(CHECK_INTERVAL_S)

    def observe(self) -> None:
        """On the event loop: beat the liveness probe, set the consumer lag (nothing here awaits or blocks)."""
        if self.health is not None:
            self.health.beat()
        if self.metrics:
            self.metrics.set_lag(self.lag())

    async def observe_every_second(self) -> None:
        """The observe task: :meth:`observe` every ``OBSERVE_INTERVAL_S`` (a task, not a Faust timer, which would
        log every beat that a busy loop delays by 0.3 s)."""
        while not self.app.should_stop:
            self.observe()
            await self.app.sleep(OBSERVE_INTERVAL_S)

    async def snapshot_partitions(self) -> None:
        """The snapshot timer: a background snapshot (commits follow the previous one), then the fusion weights."""
        if self.epoch is not None and self.epoch.lost:
            return
        self.allow_commits(await self.on_state_thread(self.snapshotter.snapshot_in_background))
        await self.best_effort(self.watch_topic, "checking the events topic")
        report = await self.best_effort(self.refresher.publish_weights, "writing the fusion weights to Redis")
        self.log_weights(report)

    async def refresh_recommendations(self) -> None:
        """Every ranker interval, rank and publish the lists of users whose state changed, off the event loop.

        One slice of ``RANK_BATCH`` users per turn of the state thread, so batches waiting for it run in between
        (and the users they change join this tick's later slices). The interval runs from the start of one tick to
        the next: a Faust timer sleeps the whole interval *after* each run, which would add the refresh's own time
        to every list's wait, and more users per tick make that time longer still.
        """
        loop = asyncio.get_running_loop()
        interval = self.rank_interval_s
        while not self.app.should_stop:
            began = loop.time()
            budget = MAX_USERS_PER_REFRESH
            try:
                while budget > 0:
                    done = await self.on_state_thread(self.refresher.refresh, min(RANK_BATCH, budget))
                    budget -= done
                    if done < RANK_BATCH:
                        break
            except Exception:
                log.exception("ranker refresh failed")
                if self.metrics:
                    self.metrics.refresh_failures.inc()
            try:  # a coroutine itself (it hops to the state thread for the decision): awaited, not handed over
                await self.hold_back()
            except Exception as exc:  # noqa: BLE001 - pausing is an optimisation; the next tick tries again
                log.warning("pausing partitions ahead of the item side failed: %s: %s", type(exc).__name__, exc)
            if self.unrestored is not None and loop.time() >= self.restore_retry:
                await self.restore(*self.unrestored)
            await self.app.sleep(max(interval - (loop.time() - began), 0.0))

    async def hold_back(self) -> None:
        """Pause fetching the partitions that ran too far ahead of the shared item side; resume the others."""
        link = self.partitions.item_side
        if not isinstance(link, ItemSideLink):
            return
        ahead = await self.on_state_thread(link.ahead, self.partitions)
        consumer = self.app.consumer
        pause, resume = ahead - self.paused, self.paused - ahead
        if pause:
            consumer.pause_partitions({TP(self.topic, p) for p in pause})
            log.info(
                "paused partitions %s: more than %d sync ticks ahead of the item side", sorted(pause), MAX_AHEAD_TICKS
            )
        if resume:
            consumer.resume_partitions({TP(self.topic, p) for p in resume})
            log.info("resumed partitions %s", sorted(resume))
        self.paused = ahead
        if self.metrics:
            self.metrics.item_side_paused.set(len(ahead))

    async def hand_over(self, app, revoked, **kwargs) -> None:  # noqa: ARG002 - faust signal signature
        """Before revoked partitions move: snapshot them synchronously (the next owner resumes there), drop them."""
        partitions = [tp.partition for tp in revoked if tp.topic == self.topic]
        if self.health is not None:
            self.health.revoked()
        self.unrestored = None
        self.mine -= set(partitions)
        for partition in partitions:
            self.applied.pop(partition, None)
        if self.metrics:
            self.metrics.assigned.set(0)
            self.metrics.set_lag({}, gone=partitions)
        if partitions:
            self.allow_commits(await self.on_state_thread(self.snapshotter.snapshot, partitions))
            await self.on_state_thread(self.partitions.drop, partitions)
            if self.watch is not None:
                self.watch.forget(partitions)
            log.info("handed over partitions %s", partitions)

    async def count_assigned(self, app, assigned, **kwargs) -> None:  # noqa: ARG002 - faust signal signature
        """After a rebalance: the assigned-partitions gauge and a log line (state loads on the first batch)."""
        mine = sorted(tp.partition for tp in assigned if tp.topic == self.topic)
        if self.paused:  # a rebalance starts afresh; the next ranker tick pauses again what is still ahead
            kept = {TP(self.topic, p) for p in self.paused if p in mine}
            if kept:
                self.app.consumer.resume_partitions(kept)
            self.paused = set()
        if self.metrics:
            self.metrics.assigned.set(len(mine))
            self.metrics.set_lag({}, gone=self.mine - set(mine))
        self.mine = set(mine)
        log.info("assigned partitions %s", mine)
        generation = self.health.assigned(mine) if self.health is not None else 0
        await self.restore(mine, generation)

    async def final_snapshot(self, app, **kwargs) -> None:  # noqa: ARG002 - faust signal signature
        """On shutdown: a last refresh, the lists flushed, a synchronous snapshot, the final weights."""
        if self.health is not None:
            self.health.stopping()
        await self.best_effort(self.refresher.refresh, "the last ranker refresh")
        await self.best_effort(self.refresher.publisher.flush, "flushing the last lists")
        self.allow_commits(await self.on_state_thread(self.snapshotter.snapshot))
        await self.best_effort(self.refresher.publish_weights, "writing the final fusion weights")
        if self.partitions.item_side is not None:
            await self.best_effort(self.partitions.item_side.stop, "stopping the item-side link")
        if self.epoch is not None and self.epoch.lost:
            log.error("no final snapshot: Redis lost the worker state; rebuild before starting workers again")
        else:
            log.info("final snapshot written")


def wire(worker: Worker, events: TopicT, snapshot_interval_s: float) -> None:
    """Connect the worker's hooks to its app: every Faust entry point of the worker, in one place."""
    app = worker.app
    worker.partitions.highwater = worker.highwater
    app.fusionrec_position_of = worker.position_of  # read by BatchingConsumer on assignment
    app.agent(events, name="fusionrec-events")(worker.process_events)
    app.timer(snapshot_interval_s)(worker.snapshot_partitions)
    app.task(worker.observe_every_second)
    app.task(worker.watch_epoch)
    app.task(worker.refresh_recommendations)
    app.on_partitions_revoked.connect(worker.hand_over)
    app.on_partitions_assigned.connect(worker.count_assigned)
    app.on_before_shutdown.connect(worker.final_snapshot)


def create_worker(settings: Settings, metrics: WorkerMetrics | None = None, health: Health | None = None) -> Worker:
    """Build the Faust app, its topics and the worker's components from ``settings``, and wire them; with
    ``health``, the worker reports its liveness and readiness there (:mod:`fusionrec.streams.health`)."""
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

    client = connect(settings.redis)
    ranker = build_ranker(settings.ranker)
    if ranker.device.type == "cpu" and settings.ranker.threads:
        torch.set_num_threads(settings.ranker.threads)
    if metrics is not None:
        metrics.set_build_info(str(ranker.device))
        if health is not None:
            health.on_ready = lambda ready: metrics.ready.set(int(ready))
    log.info(
        "ranker: top %d of %d candidates per source, category cap %d, device %s (%d threads), every %d ms",
        settings.ranker.k,
        settings.ranker.candidates,
        settings.ranker.category_cap,
        ranker.device,
        torch.get_num_threads(),
        settings.ranker.interval_ms,
    )
    snapshots = SnapshotStore(client, settings, settings.topic.events, ranker)
    item_side = None
    if settings.model.item_sync_ms:
        replica = build_item_side(settings, settings.topic.events_partitions)
        item_side = ItemSideLink(settings, replica, client, metrics)  # type: ignore[arg-type]
        item_side.restore()
        log.info(
            "item side shared by %d partitions through %s, sync ticks of %d ms (event time)",
            settings.topic.events_partitions,
            settings.item_side_topic,
            settings.model.item_sync_ms,
        )
    partitions = PartitionRegistry(snapshots, metrics, item_side)
    publisher = RecommendationPublisher.from_settings(settings, client, metrics)
    events_topic = settings.topic.events
    watch = TopicWatch(
        client,
        settings.redis.keys.topic_identity(events_topic),
        events_topic,
        admin_identify(settings.admin_config(), events_topic),
        metrics,
        on_rebase=None if item_side is None else item_side.ensure_topic,
        on_ready=None
        if health is None
        else lambda ok: health.problem(
            "events topic", None if ok else "the events topic was lost, recreated or went back (see the log)"
        ),
    )
    worker = Worker(
        app,
        topic=settings.topic.events,
        dead_letters=dead_letters,
        partitions=partitions,
        applier=BatchApplier(
            partitions,
            ProfileStore.from_settings(settings, client),
            settings.event,
            metrics,
            dead_letter_max_bytes=app.conf.producer_max_request_size,
            pseudonyms=Pseudonymiser.from_settings(settings),
            forgetter=Forgetter(client, settings.redis.keys, settings.dedup, publisher, metrics),
        ),
        refresher=Refresher(partitions, publisher, client, settings.redis.keys, settings.topic.events, metrics),
        snapshotter=Snapshotter(partitions, snapshots, metrics),
        rank_interval_s=settings.ranker.interval_ms / 1000,
        metrics=metrics,
        health=health,
        watch=watch,
    )
    worker.epoch = worker.snapshotter.epoch = Epoch(
        client, settings.redis.keys.epoch, worker.has_state, metrics, health
    )
    wire(worker, events, settings.worker.snapshot_interval_s)
    return worker
