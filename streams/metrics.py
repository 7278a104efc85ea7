"""Every Prometheus metric of the stream worker, in one place (names: ``fusionrec_worker_<what>``)."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterable, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["WorkerMetrics", "histogram_quantile"]

#: Seconds; resolves single milliseconds at the low end, where a healthy worker lives.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class WorkerMetrics:
    """The worker's metrics, registered on ``registry`` (tests pass their own to stay isolated)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.events = Counter(
            "fusionrec_worker_events_total", "Valid events processed, by type.", ["type"], registry=registry
        )
        self.dead_letter = Counter(
            "fusionrec_worker_dead_letter_total",
            "Messages on the dead-letter topic (counted once the broker acknowledged them), by first reason code.",
            ["reason"],
            registry=registry,
        )
        self.dead_letter_errors = Counter(
            "fusionrec_worker_dead_letter_errors_total",
            "Dead-letter sends that failed (each is retried until acknowledged).",
            registry=registry,
        )
        self.dead_letter_truncated = Counter(
            "fusionrec_worker_dead_letter_truncated_total",
            "Dead letters whose original bytes were cut to fit the producer's or the broker's size limit.",
            registry=registry,
        )
        self.duplicates = Counter(
            "fusionrec_worker_duplicates_skipped_total",
            "Events skipped because the user's profile already applied their event_id (from another record).",
            registry=registry,
        )
        self.redelivered = Counter(
            "fusionrec_worker_redelivered_total",
            "Records seen again at the same offset (after a crash or rebalance); not reapplied.",
            registry=registry,
        )
        self.latency = Histogram(
            "fusionrec_worker_processing_latency_seconds",
            "Event time to profile written, per event.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "fusionrec_worker_batch_size", "Records per processed batch.", buckets=BATCH_BUCKETS, registry=registry
        )
        self.model_updates = Counter(
            "fusionrec_worker_model_updates_total", "Events learned, by model.", ["model"], registry=registry
        )
        self.evictions = Counter(
            "fusionrec_worker_evictions_total", "State entries evicted, by model.", ["model"], registry=registry
        )
        self.snapshots = Counter("fusionrec_worker_snapshots_total", "Model snapshots written.", registry=registry)
        self.snapshot_seconds = Histogram(
            "fusionrec_worker_snapshot_seconds",
            "Time to write one partition snapshot.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_failures = Counter(
            "fusionrec_worker_batch_failures_total",
            "Batches whose processing raised (Redis down, a bug); each is retried, never skipped.",
            registry=registry,
        )
        self.forgotten = Counter(
            "fusionrec_worker_forgotten_users_total",
            "Users forgotten on request (fusionrec forget): profile, dedup entry, stored list and per-user model "
            "state removed.",
            registry=registry,
        )
        self.partitions = Gauge(
            "fusionrec_worker_partitions", "Partitions this worker holds model state for.", registry=registry
        )
        self.assigned = Gauge(
            "fusionrec_worker_assigned_partitions",
            "Events-topic partitions the consumer group assigned to this worker.",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "fusionrec_worker_consumer_lag_records",
            "Records of an assigned events partition not applied yet: the high watermark of the last fetch response "
            "(at least the offset after the last record fetched) minus the position after the last applied batch.",
            ["partition"],
            registry=registry,
        )
        self.ready = Gauge(
            "fusionrec_worker_ready",
            "1 while /readyz answers ready: partitions assigned and their state restored from the snapshots, and no "
            "problem reported (a lost or rewound events topic).",
            registry=registry,
        )
        self.build_info = Gauge(
            "fusionrec_build_info",
            "Always 1; the labels say which fusionrec, Python and torch run, and the ranker's torch device.",
            ["version", "python", "torch", "device"],
            registry=registry,
        )
        # --- the shared item side (streams/item_side.py) ---
        self.item_side_records = Counter(
            "fusionrec_item_side_records_applied_total",
            "Item-side records (one per event and splittable source set) this worker's replica learned, from every "
            "partition.",
            registry=registry,
        )
        self.item_side_waiting_ticks = Gauge(
            "fusionrec_item_side_waiting_ticks",
            "Sync ticks with records the replica holds back until every partition has closed them (growing: a "
            "partition is behind or unowned).",
            registry=registry,
        )
        self.item_side_paused = Gauge(
            "fusionrec_item_side_paused_partitions",
            "Partitions this worker paused because they ran more than MAX_AHEAD_TICKS ahead of the item side.",
            registry=registry,
        )
        self.item_side_lag = Gauge(
            "fusionrec_item_side_lag_seconds",
            "Event time between the newest event this worker learned and the last tick its item side applied.",
            registry=registry,
        )
        # --- broker restarts: producers that recreate themselves, a topic lost or rewound (streams/rewind.py) ---
        self.producer_stall = Gauge(
            "fusionrec_kafka_producer_stall_seconds",
            "Seconds the producer has waited for any acknowledgement while records wait (0: none waits), by producer.",
            ["producer"],
            registry=registry,
        )
        self.producer_resets = Counter(
            "fusionrec_kafka_producer_resets_total",
            "Times a producer was recreated after a fatal error or a stall (a broker restart), by producer.",
            ["producer"],
            registry=registry,
        )
        self.topic_lost = Gauge(
            "fusionrec_events_topic_lost",
            "1 while the events topic this worker's state was built from is gone or was recreated (a new topic id, "
            "or every partition behind the state); the worker is not ready.",
            registry=registry,
        )
        self.topic_lost_total = Counter(
            "fusionrec_events_topic_losses_total",
            "Times the worker found the events topic gone or recreated (each is logged as an error).",
            registry=registry,
        )
        self.redis_state_lost = Gauge(
            "fusionrec_redis_state_lost",
            "1 once Redis lost the worker state (its epoch key vanished: a restart without persistence, a flush); "
            "the worker stops applying events and snapshotting, and is not ready (docs/worker.md).",
            registry=registry,
        )
        self.redis_state_losses = Counter(
            "fusionrec_redis_state_losses_total",
            "Times the worker found Redis had lost its state (each is logged as an error).",
            registry=registry,
        )
        self.rewound = Gauge(
            "fusionrec_events_rewound",
            "Events partitions whose end is behind the offset the worker's state already covers (the topic went "
            "back: a broker restarted without its data).",
            registry=registry,
        )
        # --- abuse limits on the item side (models/guard.py) ---
        self.guard_capped = Counter(
            "fusionrec_guard_capped_total",
            "Item-side records that taught nothing because their user reached the per-window cap.",
            registry=registry,
        )
        self.guard_unvoted = Gauge(
            "fusionrec_guard_unvoted_items",
            "Items this worker's item side keeps out of popular/trending until enough distinct returning users act on "
            "them.",
            registry=registry,
        )
        self.guard_unvoted_records = Counter(
            "fusionrec_guard_unvoted_records_total",
            "Item-side records popular and trending did not learn: their item had too few distinct returning users.",
            registry=registry,
        )
        self.guard_rate_jumps = Counter(
            "fusionrec_guard_item_rate_jumps_total",
            "Windows in which one item's event rate jumped beyond the configured factor over its previous rate.",
            registry=registry,
        )
        self.refresh_failures = Counter(
            "fusionrec_ranker_refresh_failures_total",
            "Ranker refresh ticks that raised (the next tick tries again).",
            registry=registry,
        )
        # --- the ranker and the fusion bandit ---
        self.freshness = Histogram(
            "fusionrec_recommendations_freshness_seconds",
            "Event time to the user's list reflecting it published, per event.",
            buckets=FRESHNESS_BUCKETS,
            registry=registry,
        )
        self.published = Counter(
            "fusionrec_recommendations_published_total",
            "Recommendation lists published (topic and Redis).",
            registry=registry,
        )
        self.publish_errors = Counter(
            "fusionrec_recommendations_publish_errors_total",
            "Lists the broker did not acknowledge (the next change republishes them).",
            registry=registry,
        )
        self.refresh_seconds = Histogram(
            "fusionrec_ranker_refresh_seconds",
            "Time of one ranker refresh call on the state thread (at most "
            "fusionrec.streams.refresh.RANK_BATCH users; a tick makes as many calls as its "
            "changed users need).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.lists = Counter(
            "fusionrec_fusion_lists_total",
            "Lists served, by arm and action kind.",
            ["arm", "action"],
            registry=registry,
        )
        self.rewards = Counter(
            "fusionrec_fusion_rewards_total",
            "Events on an item of the user's served list (each rewards the sources behind it).",
            registry=registry,
        )
        self.weights = Gauge(
            "fusionrec_fusion_weight",
            "The bandit's exploit weight per segment and source (mean over this worker's partitions).",
            ["segment", "source"],
            registry=registry,
        )
        self.learned_lists = Gauge(
            "fusionrec_learned_ranker_lists",
            "Labelled lists the learned ranker has learned from (the shared model's; the sum over this worker's "
            "partitions when each has its own).",
            registry=registry,
        )
        self.learned_ready = Gauge(
            "fusionrec_learned_ranker_ready_partitions",
            "Partitions of this worker whose learned ranker has learned enough to serve its lists.",
            registry=registry,
        )
        self.learned_loss = Gauge(
            "fusionrec_learned_ranker_loss",
            "The learned rankers' last mini-batch loss (listwise cross-entropy; mean over this worker's partitions).",
            registry=registry,
        )

    def set_build_info(self, device: str) -> None:
        """Set ``fusionrec_build_info`` for this process, the ranker running on torch ``device``."""
        import torch

        from fusionrec import __version__

        self.build_info.labels(__version__, platform.python_version(), torch.__version__, device).set(1)

    def set_lag(self, lag: Mapping[int, int], gone: Iterable[int] = ()) -> None:
        """Set the consumer lag of the partitions in ``lag``; drop the series of the partitions in ``gone``."""
        for partition in gone:
            with contextlib.suppress(KeyError):  # never set: not fetched while it was ours
                self.consumer_lag.remove(str(partition))
        for partition, records in lag.items():
            self.consumer_lag.labels(str(partition)).set(records)


def histogram_quantile(samples: Mapping[str, float], histogram: str, q: float) -> float:
    """Prometheus's ``histogram_quantile`` over scraped samples (``{histogram}_bucket{le="…"}`` keys, as
    :meth:`fusionrec.streams.child.WorkerChild.metrics` returns them): linear interpolation within the bucket; NaN when
    empty."""
    prefix = f'{histogram}_bucket{{le="'
    buckets = sorted((float(key[len(prefix) : -2]), count) for key, count in samples.items() if key.startswith(prefix))
    if not buckets or not buckets[-1][1]:
        return float("nan")
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_bound, prev_count = bound, count
    return prev_bound
