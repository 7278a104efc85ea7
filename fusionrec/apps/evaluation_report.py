"""The evaluation's outputs: the summary table, the JSON report and the PNG plots (I/O at the edge)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson

__all__ = ["format_summary", "format_table", "plot_timeline", "write_report"]


def format_summary(report: dict[str, Any]) -> str:
    """The run in three lines: the layout and speed, what the metrics count (scored targets, served and unserved
    apart), and bandit fusion's HR over all scored targets and over the served ones."""
    run = report["run"]
    k = run["ks"][-1]
    partitions, sync = run["partitions"], run["item_sync_ms"]
    layout = f"{partitions} partition{'s' if partitions != 1 else ''}, " + (
        f"shared item side (sync ticks of {sync:,} ms)" if sync else "item side per partition"
    )
    lag = f"every {run['block']:,} events" if run["block"] else f"every {run['lag_ms']:,} ms of event time"
    targets = run["targets"]
    share = 100 * run["served_share"]
    in_file = "" if run["targets_in_file"] == targets else f" (of {run['targets_in_file']:,} in the file)"
    return "\n".join(
        [
            f"{run['events']:,} events in {run['seconds']:.1f} s ({run['events_per_s'] or 0:,.0f} events/s); {layout}; "
            f"lists of {k} refreshed {lag} ({run['blocks']:,} blocks, {run['lists_made']:,} lists made)",
            f"{targets:,} scored targets{in_file}: {run['served_targets']:,} served ({share:.1f}%), "
            f"{run['unserved_targets']:,} unserved (no list yet: no earlier block of the user's)",
            f"fused:learned HR@{k} {run[f'hr@{k}']:.4f} over all scored targets, {run[f'hr_served@{k}']:.4f} over the "
            "served ones",
        ]
    )


def format_table(report: dict[str, Any]) -> str:
    """One line per variant: HR, MRR, NDCG at each k, HR over served targets, coverage, cold-start share served,
    by kind and segment."""
    ks = report["run"]["ks"]
    variants = report["variants"]
    head = (
        ["variant"]
        + [f"{m}@{k}" for k in ks for m in ("HR", "MRR", "NDCG")]
        + [f"HR@{ks[-1]} served", "coverage", "cold served"]
        + [f"HR@{ks[-1]} new", f"HR@{ks[-1]} repeat", f"HR@{ks[-1]} returning"]
    )
    rows = [head]
    best_single = report.get("best_single")
    for name, groups in variants.items():
        a = groups["all"]
        label = name + (" (best single)" if name == best_single else "") + (" (baseline)" if name == "popular" else "")
        rows.append(
            [label]
            + [f"{a[f'{m}@{k}']:.4f}" for k in ks for m in ("hr", "mrr", "ndcg")]
            + [
                f"{a[f'hr_served@{ks[-1]}']:.4f}",
                f"{groups['coverage']:.3f}",
                f"{groups['segment:new']['served']:.3f}",
                f"{groups['kind:new'][f'hr@{ks[-1]}']:.4f}",
                f"{groups['kind:repeat'][f'hr@{ks[-1]}']:.4f}",
                f"{groups['segment:returning'][f'hr@{ks[-1]}']:.4f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``report.json`` and the plots into ``out_dir``; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return [path, *plot_timeline(report, out_dir)]


def plot_timeline(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """``hr_over_time.png`` (HR@20 per window for every variant) and ``weights_over_time.png`` (the bandit's
    exploit weights per segment at the end of each window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    if not timeline:
        return []
    times = [dt.datetime.fromtimestamp(p["ts"] / 1000, tz=dt.UTC) for p in timeline]
    written = []

    fig, ax = plt.subplots(figsize=(10, 5.5))
    for variant in report["variants"]:
        values = [p["hr@20"].get(variant) for p in timeline]
        style = "-" if variant.startswith(("fused", "ab")) else "--"
        width = 2.4 if variant in ("fused:learned", "fused:bandit") else 1.2
        ax.plot(times, [v if v is not None else float("nan") for v in values], style, lw=width, label=variant)
    ax.set_title("HR@20 per time window (prequential)")
    ax.set_ylabel("HR@20")
    ax.set_xlabel("event time (UTC)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    written.append(_save(fig, out_dir / "hr_over_time.png"))

    segments = list(timeline[0]["weights"])
    fig, axes = plt.subplots(1, len(segments), figsize=(6 * len(segments), 4.5), sharey=True, squeeze=False)
    for ax, segment in zip(axes[0], segments, strict=True):
        sources = list(timeline[0]["weights"][segment])
        series = [[p["weights"][segment][s] for p in timeline] for s in sources]
        ax.stackplot(times, series, labels=sources, alpha=0.85)
        ax.set_title(f"bandit weights: {segment} users")
        ax.set_ylim(0, 1)
        ax.set_xlabel("event time (UTC)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("exploit weight")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    written.append(_save(fig, out_dir / "weights_over_time.png"))
    return written


def _save(fig, path: Path) -> Path:
    """Lay out a figure of time series, write it as PNG and free it."""
    import matplotlib.pyplot as plt

    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
