"""Does the production layout keep the evaluation's quality? One partition against six, on the same files.

For each data file, one run (one evaluation at a time, in this process) of :func:`fusionrec.apps.evaluation.evaluate`
— the function ``fusionrec evaluate`` runs, here without the rating MAE and the plots — in three layouts:

* ``1``: ``--partitions 1`` (one model state and bandit; the shared item side with its sync ticks);
* ``6 shared``: ``--partitions 6``: users placed by murmur2 of ``user_id``, each partition with its own user side,
  CF model and bandit, one item side shared by all (``--item-sync-ms``, the setting, 1000 by default);
* ``6 apart``: ``--partitions 6 --item-sync-ms 0``: every partition keeps its own item side, learned from its users
  only (the layout before 0.2).

``--diagnose`` adds runs that take the layout apart, to find where a gap between ``6 shared`` and ``1`` comes from:

* ``1 apart``: one partition, no item-side sync (the evaluation before 0.2): isolates what the shared item side
  changes for one partition — its within-tick lag (none when timestamps are whole seconds: a block is then one
  second and the next event closes its tick) and its eviction, every hour of event time rather than every 50,000
  offsets;
* ``6 +cf``, ``6 +bandit``, ``6 +both``: ``6 shared`` with **one** CF model, **one** bandit, or both, shared by the
  six partition states (counterfactual layouts patched in here, not something the worker can run): what
  per-partition CF factors and per-partition bandits (each learning from a sixth of the rewards) cost.

``--seeds N`` adds ``1`` and ``6 shared`` with the CF models and bandits seeded N other ways (``1 seed+n``,
``6 seed+n``): the spread of those runs is the noise a difference between layouts has to clear (the bandit explores
at random, CF starts from random factors).

The table gives fused:learned HR@20 and MRR@20 (what a worker serves), fused:bandit HR@20, fused:equal HR@20 (the
same candidates with no bandit: a gap there is the sources', not the bandit's), the best single source's HR@20,
cf's HR@20 (the one source whose item side stays per partition), the relative difference of fused:learned HR@20
against the one-partition run and events/s; a second table gives every variant's HR@20 per layout. The acceptance
of issue 10 is ``6 shared`` within ``--tolerance`` (3 %, relative) of ``1``.

    python benchmarks/bench_partitions.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz \\
        ../shared/data/movielens-100k/u.data.gz ../shared/data/movielens-1m-partial/ratings_first2999users.dat.gz
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fusionrec.apps import evaluation
from fusionrec.apps.evaluation import EvalConfig, evaluate
from fusionrec.contracts.settings import load_settings
from fusionrec.producers.datasets import read_dataset
from fusionrec.streams import state

K = 20
LAYOUTS: dict[str, dict[str, Any]] = {
    "1": {"partitions": 1},
    "6 shared": {"partitions": 6},
    "6 apart": {"partitions": 6, "item_sync_ms": 0},
}
DIAGNOSTIC: dict[str, dict[str, Any]] = {
    "1 apart": {"partitions": 1, "item_sync_ms": 0},
    "6 +cf": {"partitions": 6, "share": ("cf",)},
    "6 +bandit": {"partitions": 6, "share": ("bandit",)},
    "6 +both": {"partitions": 6, "share": ("cf", "bandit")},
}


@contextlib.contextmanager
def patched(share: tuple[str, ...] = (), seed: int = 0) -> Iterator[None]:
    """Counterfactual runs (the worker can run neither): ``share`` gives every partition state partition 0's CF
    model (``"cf"``) and/or bandit (``"bandit"``); ``seed`` seeds partition ``p``'s CF model and bandit as
    partition ``p + seed`` would be (another draw of the same layout)."""
    init, build_models, build_fusion = evaluation._Run.__init__, state.build_models, state.build_fusion

    def init_shared(self, *args, **kwargs):
        init(self, *args, **kwargs)
        first = self.states[0]
        for other in self.states[1:]:
            if "cf" in share:
                other.models["cf"] = first.models["cf"]
            if "bandit" in share:
                other.fusion.bandit = first.fusion.bandit

    evaluation._Run.__init__ = init_shared
    state.build_models = lambda settings, partition: build_models(settings, partition + seed)
    state.build_fusion = lambda settings, partition, ranker=None: build_fusion(settings, partition + seed, ranker)
    try:
        yield
    finally:
        evaluation._Run.__init__, state.build_models, state.build_fusion = init, build_models, build_fusion


def run_layouts(path: Path, layouts: dict[str, dict], args: argparse.Namespace) -> dict[str, dict]:
    """Every layout's report on ``path`` (the dataset is read once)."""
    dataset = read_dataset(path, limit=args.limit)
    settings = load_settings(ranker_device=args.device)
    reports = {}
    for name, layout in layouts.items():
        options = dict(layout)
        share, seed = options.pop("share", ()), options.pop("seed", 0)
        config = EvalConfig(ks=(10, K), block=args.block, lag_ms=args.lag_ms, settings=settings, **options)
        started = time.perf_counter()
        with patched(share, seed):
            report = evaluate(dataset.events, config)
        report["dataset"] = {"path": str(path), "events": len(dataset.events)}
        reports[name] = report
        run = report["run"]
        print(
            f"  {path.name} [{name}]: {run['events']:,} events in {time.perf_counter() - started:.1f} s "
            f"({run['events_per_s']:,.0f} events/s), {SERVED} HR@{K} {run[f'hr@{K}']:.4f}",
            file=sys.stderr,
            flush=True,
        )
    return reports


#: The variant judged: what a worker serves (the learned ranker once ready, bandit fusion before).
SERVED = "fused:learned"


def hr(report: dict, variant: str = SERVED) -> float:
    """HR@K unrounded (the report rounds to 4 places: too coarse for a relative difference at HR 0.006)."""
    cell = report["variants"][variant]["all"]
    return cell[f"hits@{K}"] / cell["targets"] if cell["targets"] else 0.0


def rows_of(path: Path, reports: dict[str, dict]) -> list[list[str]]:
    base = hr(reports["1"])
    rows = []
    for name, report in reports.items():
        variants, run = report["variants"], report["run"]
        fused = variants[SERVED]["all"]
        best = report["best_single"]
        value = hr(report)
        rel = "" if name == "1" else (f"{100 * (value - base) / base:+.1f}%" if base else "n/a")
        rows.append(
            [
                path.name,
                name,
                f"{value:.4f}",
                f"{fused[f'mrr@{K}']:.4f}",
                f"{hr(report, 'fused:bandit'):.4f}",
                f"{variants['fused:equal']['all'][f'hr@{K}']:.4f}",
                f"{best} {variants[best]['all'][f'hr@{K}']:.4f}",
                f"{variants['cf']['all'][f'hr@{K}']:.4f}",
                rel,
                f"{run['events_per_s']:,.0f}",
                f"{run['events'] / run['cpu_seconds']:,.0f}" if run["cpu_seconds"] else "",
            ]
        )
    return rows


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [head, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="Data files (anything `fusionrec evaluate` reads).")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N events of each file.")
    parser.add_argument("--lag-ms", type=int, default=None, help="As `evaluate --lag-ms` [default: the setting].")
    parser.add_argument("--block", type=int, default=None, help="As `evaluate --block` (count-based blocks).")
    parser.add_argument("--device", default="cpu", help="Ranker device [default: cpu].")
    parser.add_argument("--torch-threads", type=int, default=1, help="Torch threads [default: 1].")
    parser.add_argument("--tolerance", type=float, default=0.03, help="Relative bound on 6 vs 1 [default: 0.03].")
    parser.add_argument("--diagnose", action="store_true", help="Add the runs that take the layout apart.")
    parser.add_argument(
        "--seeds", type=int, default=0, help="Also run 1 and 6 shared with N other seeds (their noise)."
    )
    parser.add_argument("--json", type=Path, default=None, help="Write every run's report (timeline omitted).")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.torch_threads)
    layouts = {**LAYOUTS, **(DIAGNOSTIC if args.diagnose else {})}
    for n in range(1, args.seeds + 1):  # seeds 6n.. (partition p as p + 6n): none shared with another run
        layouts |= {f"1 seed+{n}": {"partitions": 1, "seed": 6 * n}, f"6 seed+{n}": {"partitions": 6, "seed": 6 * n}}
    results: dict[str, dict[str, dict]] = {}
    for path in args.paths:
        if not path.exists():
            parser.error(f"{path}: no such file")
        results[str(path)] = run_layouts(path, layouts, args)

    head = [
        "data",
        "layout",
        f"HR@{K}",
        f"MRR@{K}",
        f"bandit HR@{K}",
        f"equal HR@{K}",
        f"best single HR@{K}",
        f"cf HR@{K}",
        "vs 1",
        "ev/s",
        "ev/cpu-s",
    ]
    rows = [row for path in args.paths for row in rows_of(path, results[str(path)])]
    print(
        f"{SERVED} per layout (vs 1: relative difference of HR@{K} from the one-partition run; ev/cpu-s: per CPU "
        "second of this process, less sensitive to other load on the machine)"
    )
    print(table(head, rows))

    print(f"\nHR@{K} of every variant per layout")
    for path in args.paths:
        reports = results[str(path)]
        variants = list(next(iter(reports.values()))["variants"])
        print(f"\n{path.name}")
        vrows = [[v, "", *(f"{r['variants'][v]['all'][f'hr@{K}']:.4f}" for r in reports.values())] for v in variants]
        print(table(["variant", "", *reports], vrows))

    failed = []
    print()
    for path in args.paths:
        reports = results[str(path)]
        base, six = hr(reports["1"]), hr(reports["6 shared"])
        rel = abs(six - base) / base if base else float("inf")
        ok = rel <= args.tolerance
        failed += [] if ok else [path.name]
        verdict = "within" if ok else "NOT within"
        print(f"{path.name}: {SERVED} HR@{K}, 6 shared vs 1: {100 * rel:.2f}% ({verdict} {100 * args.tolerance:.0f}%)")
        means = {}
        for layout, first in (("1", "1"), ("6", "6 shared")) if args.seeds else ():
            runs = [hr(r) for n, r in reports.items() if n == first or n.startswith(f"{layout} seed+")]
            mean = means[layout] = sum(runs) / len(runs)
            print(
                f"  {layout} partition{'s' * (layout != '1')}, {len(runs)} seeds: "
                f"{', '.join(f'{v:.4f}' for v in runs)}; mean {mean:.4f}, max - min "
                f"{100 * (max(runs) - min(runs)) / mean if mean else 0:.1f}% of it"
            )
        if means and means["1"]:
            print(f"  6 vs 1, mean over seeds: {100 * (means['6'] - means['1']) / means['1']:+.2f}%")
    if args.json is not None:
        for reports in results.values():
            for report in reports.values():
                report.pop("timeline", None)
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
