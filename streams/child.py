"""Run ``fusionrec worker`` as a child process with given settings, and read its Prometheus metrics.

Used by ``fusionrec demo``, the benchmarks and the integration tests, so all three start workers the same way.
"""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from fusionrec.contracts.events import Event
from fusionrec.contracts.settings import Settings
from fusionrec.infra.child import CliChild
from fusionrec.infra.stack import free_port
from fusionrec.producers.producer import EventProducer
from fusionrec.producers.replay import replay_events

__all__ = ["WorkerChild"]


class WorkerChild(CliChild):
    """A worker process. ``metrics()`` sums each sample over its labels (``name``) and keeps labelled samples
    under ``name{labels}``."""

    def __init__(self, settings: Settings, log_path: Path, **overrides: str):
        self.metrics_port = free_port()
        ports = {"FUSIONREC_METRICS_PORT": str(self.metrics_port), "FUSIONREC_WORKER_WEB_PORT": str(free_port())}
        super().__init__("worker", settings, log_path, ports | overrides)

    def metrics(self) -> Counter:
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            text = urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            return Counter()
        out: Counter = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                out[sample.name] += sample.value
                if sample.labels:
                    labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                    out[f"{sample.name}{{{labels}}}"] += sample.value
        return out

    def wait_for(
        self,
        predicate: Callable[[Counter], bool],
        timeout: float = 90.0,
        on_poll: Callable[[Counter], None] | None = None,
    ) -> Counter:
        """Poll the metrics until ``predicate`` holds; raise if the worker exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; see {self.log_path}")
            metrics = self.metrics()
            if on_poll is not None and metrics:
                on_poll(metrics)
            if metrics and predicate(metrics):
                return metrics
            time.sleep(0.1)
        raise TimeoutError(f"worker did not get there in {timeout:.0f}s; see {self.log_path}")

    def warm_up(self, producer: EventProducer, events: Sequence[Event], *, lists: bool = False) -> Counter:
        """Send ``events`` as users of their own (``warm-user-{i}``: no measured user's state changes) and wait
        until the worker has processed them (with ``lists``, also published their lists); return its metrics then.

        After it the worker has joined the group and owns every partition, so a measurement starts warm.
        """
        warm = [e._replace(event_id=f"warm-{i}", user_id=f"warm-user-{i}") for i, e in enumerate(events)]
        replay_events(warm, producer, timestamps="wallclock")
        freshness = "fusionrec_recommendations_freshness_seconds_count"
        return self.wait_for(
            lambda m: m["fusionrec_worker_events_total"] >= len(warm) and (not lists or m[freshness] >= len(warm)),
            timeout=120,
        )
