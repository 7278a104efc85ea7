"""What ``fusionrec demo`` watches while it runs, and what it leaves behind: samples of the worker's metrics, the
online evaluation and the fusion weights, a live terminal view of the latest one, and a closing report (JSON plus
PNG plots of the hit rate and the weights over time and of the freshness distribution)."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from fusionrec.consumers.online_eval import OnlineEvaluator
from fusionrec.contracts.settings import Settings
from fusionrec.stores.client import connect
from fusionrec.streams.metrics import histogram_quantile

__all__ = ["Monitor", "Sample", "freshness_buckets", "live_table", "write_report"]

FRESHNESS = "fusionrec_recommendations_freshness_seconds"
#: Freshness quantiles in the live view are over this many seconds of lists (the histograms are cumulative).
WINDOW_S = 5.0


@dataclass
class Sample:
    """One look at the running system, ``t`` seconds after the replay began."""

    t: float
    sent: int
    applied: float
    published: float
    events_per_s: float
    freshness_p50_ms: float | None
    freshness_p99_ms: float | None
    targets: int
    hit_rates: dict[str, float | None] = field(default_factory=dict)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    rewards: int = 0
    learned_lists: int = 0


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value * 1000, 1)


class Monitor:
    """Samples the worker (its metrics endpoint), the online evaluator and the weights in Redis."""

    def __init__(
        self,
        settings: Settings,
        metrics: Callable[[], Counter],
        evaluator: OnlineEvaluator,
        lock: threading.Lock,
        sent: Callable[[], int],
    ):
        self.settings = settings
        self._metrics = metrics
        self._evaluator = evaluator
        self._lock = lock
        self._sent = sent
        self._client = connect(settings.redis)
        self._began = time.monotonic()
        self._history: list[tuple[float, Counter]] = []  # (t, metrics) of the last WINDOW_S
        self.samples: list[Sample] = []
        self.last_metrics: Counter = Counter()

    def sample(self) -> Sample:
        now = time.monotonic() - self._began
        metrics = self._metrics() or self.last_metrics  # empty when a scrape fails: keep the last one
        self.last_metrics = metrics
        self._history.append((now, metrics))
        while len(self._history) > 2 and now - self._history[0][0] > WINDOW_S:
            self._history.pop(0)
        then, old = self._history[0]
        window = Counter({key: metrics[key] - old.get(key, 0.0) for key in metrics if key.startswith(FRESHNESS)})
        applied = metrics["fusionrec_worker_events_total"]
        rate = (applied - old["fusionrec_worker_events_total"]) / (now - then) if now > then else 0.0
        with self._lock:
            summary = self._evaluator.summary()
        variants = summary["variants"]
        weights, rewards, learned = self._weights()
        sample = Sample(
            t=round(now, 2),
            sent=self._sent(),
            applied=applied,
            published=metrics["fusionrec_recommendations_published_total"],
            events_per_s=round(rate, 1),
            freshness_p50_ms=_finite(histogram_quantile(window, FRESHNESS, 0.5)),
            freshness_p99_ms=_finite(histogram_quantile(window, FRESHNESS, 0.99)),
            targets=max((v["targets"] for v in variants.values()), default=0),
            hit_rates={name: v["hit_rate"] for name, v in variants.items()},
            weights=weights,
            rewards=rewards,
            learned_lists=learned,
        )
        self.samples.append(sample)
        return sample

    def _weights(self) -> tuple[dict[str, dict[str, float]], int, int]:
        """The bandit's weights per segment (mean over the partitions' Redis entries), its rewards, lists learned."""
        keys = sorted(self._client.scan_iter(match=self.settings.redis.keys.all_weights(self.settings.topic.events)))
        entries = [orjson.loads(v) for v in self._client.mget(keys) if v is not None] if keys else []
        sums: dict[str, dict[str, float]] = {}
        for entry in entries:
            for segment, row in entry["weights"].items():
                for source, weight in row.items():
                    sums.setdefault(segment, {}).setdefault(source, 0.0)
                    sums[segment][source] += weight / len(entries)
        learned = [e["learned"] for e in entries if e.get("learned")]
        lists = (
            (
                learned[0]["lists_learned"]
                if all(e.get("shared") for e in learned)
                else sum(e["lists_learned"] for e in learned)
            )
            if learned
            else 0
        )
        return sums, sum(e["rewards"] for e in entries), lists

    def close(self) -> None:
        self._client.close()


def live_table(sample: Sample, total: int, k: int):
    """The live view of one sample (a Rich renderable)."""
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()

    def ms(value: float | None) -> str:
        return "—" if value is None else f"{value:,.0f} ms"

    table.add_row("elapsed", f"{sample.t:,.0f} s")
    table.add_row(
        "events", f"{sample.sent:,} sent of {total:,}, {sample.applied:,.0f} applied ({sample.events_per_s:,.0f}/s)"
    )
    table.add_row(
        "lists",
        f"{sample.published:,.0f} published; freshness p50 {ms(sample.freshness_p50_ms)}, p99 "
        f"{ms(sample.freshness_p99_ms)} (last {WINDOW_S:.0f} s)",
    )
    rates = sorted(((v, r) for v, r in sample.hit_rates.items() if r is not None), key=lambda vr: -vr[1])
    shown = "  ".join(f"[bold]{v}[/] {r:.3f}" if v == "fused" else f"{v} {r:.3f}" for v, r in rates) or "—"
    table.add_row(f"online HR@{k}", f"{shown}  ({sample.targets:,} targets judged)")
    for segment, row in sample.weights.items():
        text = "  ".join(f"{s} {w:.2f}" for s, w in sorted(row.items(), key=lambda sw: -sw[1]))
        table.add_row(f"weights {segment}", text)
    table.add_row(
        "learning", f"bandit {sample.rewards:,} rewarded events; learned ranker {sample.learned_lists:,} lists"
    )
    return table


def freshness_buckets(metrics: Mapping[str, float]) -> list[tuple[float, float]]:
    """(upper bound in seconds, lists in that bucket) of the worker's freshness histogram."""
    prefix = f'{FRESHNESS}_bucket{{le="'
    cumulative = sorted((float(k[len(prefix) : -2]), v) for k, v in metrics.items() if k.startswith(prefix))
    out, before = [], 0.0
    for bound, count in cumulative:
        out.append((bound, count - before))
        before = count
    return out


def write_report(
    out: Path, report: dict[str, Any], samples: list[Sample], buckets: list[tuple[float, float]]
) -> list[Path]:
    """``report.json`` (the report, every sample, the freshness buckets) and three PNG plots in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "report.json"
    path.write_bytes(
        orjson.dumps(
            report | {"samples": [asdict(s) for s in samples], "freshness_buckets": buckets},
            option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
        )
    )
    written.append(path)
    t = [s.t for s in samples]

    fig, ax = plt.subplots(figsize=(8, 4.5))
    variants = sorted({v for s in samples for v in s.hit_rates})
    for variant in variants:
        ys = [s.hit_rates.get(variant) for s in samples]
        ax.plot(t, [math.nan if y is None else y for y in ys], label=variant, lw=2.5 if variant == "fused" else 1.2)
    ax.set(
        xlabel="seconds since the replay began",
        ylabel=f"online hit rate @{report['k']} (cumulative)",
        title="Online hit rate: the fused list against each source's own list",
    )
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    written.append(_save(fig, out / "hit_rate.png"))

    segments = sorted({seg for s in samples for seg in s.weights})
    fig, axes = plt.subplots(1, max(len(segments), 1), figsize=(5 * max(len(segments), 1), 4), squeeze=False)
    for ax, segment in zip(axes[0], segments, strict=False):
        sources = sorted({src for s in samples for src in s.weights.get(segment, {})})
        for source in sources:
            ax.plot(t, [s.weights.get(segment, {}).get(source, math.nan) for s in samples], label=source)
        ax.set(
            xlabel="seconds since the replay began", ylabel="fusion weight", title=f"bandit weights: {segment} users"
        )
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    written.append(_save(fig, out / "weights.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    finite = [(b, n) for b, n in buckets if math.isfinite(b)]
    if finite:
        labels = [f"≤{b * 1000:,.0f}" if b < 1 else f"≤{b:,.1f}s" for b, _ in finite]
        ax.bar(range(len(finite)), [n for _, n in finite])
        ax.set_xticks(range(len(finite)), labels, rotation=45, fontsize=7)
    ax.set(
        xlabel="event time → list published (ms unless marked)",
        ylabel="events reflected",
        title=f"Freshness: p50 {report['freshness_ms']['p50']:,.0f} ms, p99 {report['freshness_ms']['p99']:,.0f} ms",
    )
    written.append(_save(fig, out / "freshness.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
