"""The ranker's speed, in two parts.

**Ranking capacity** (``--capacity``, issue 14): users ranked per second on one CPU thread by the production
sources (``build_models``, the worker's) and the production ranker (``build_ranker``'s settings), against the path
it replaced (``tests/unit/ranker_reference.py``: per-candidate ``prepare``, item-by-item ``fuse``, exhaustive CF
scoring), side by side in one run. Each data set's first ``--warm`` share of events is learned, then the rest in
blocks of ``--block`` events, as a worker refreshes: after each block its users are ranked by both paths (which
goes first alternates), in batches of at most ``--batch``. GC is tuned as in the worker. Prints users/s and
microseconds per user (wall clock) for each path, users per second of the process's CPU time (what a quiet machine
would show when others share this one), the share of gather (each source's ``candidates_many``), prepare (filter,
normalise, unions, the dense tensor) and fuse (weights, product, sort, cut to k), each source's gather cost, and
how many lists differ between the paths (they must not).

    python benchmarks/bench_ranker.py --capacity                 # the Taobao slice and MovieLens-100K
    python benchmarks/bench_ranker.py --capacity PATH [PATH ...] --block 200 --batch 256

``--evaluate PATH``: ``fusionrec evaluate``'s run (``fusionrec.apps.evaluation.evaluate``, default settings, one
torch thread) in process, first with the old path patched in, then with the batched one: events/s each, and
whether every variant's HR@20 is the same.

**Exhaustive matrix-factorisation top-k** (the default): ``fusionrec.models.topk.exhaustive_top_k`` (torch,
chunked) against the plain numpy path (``numpy_top_k``: matmul + ``argpartition`` per user chunk), same synthetic
factors, one run.

Prints, for both: wall seconds, users/s, scored (user, item) pairs/s, the speed-up, and the peak RSS growth
(VmHWM, reset between stages where the kernel allows); then how far they agree on a sample of users (share of
identical top-k sets, largest score difference). Also the scoring stage alone (the block products, no top-k) and
the device's plain matmul throughput (a large square ``torch.mm``, synchronised), with the scoring stage's FLOP/s
as a share of it.

    python benchmarks/bench_ranker.py
    python benchmarks/bench_ranker.py --users 100000 --items 100000 --factors 32 --k 100 --device auto
    python benchmarks/bench_ranker.py --baseline-users 20000   # numpy on a subset, its rate extrapolated
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fusionrec.models.topk import exhaustive_top_k, numpy_top_k, pick_device, plan_chunks

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CAPACITY_DATA = (
    DATA / "taobao-userbehavior-slice" / "UserBehavior_slice.csv.gz",
    DATA / "movielens-100k" / "u.data.gz",
)
STAGES = ("gather", "prepare", "fuse")


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (``clear_refs`` 5, Linux >= 4.0), so each stage gets its own peak.

    Freed heap pages go back to the system first (glibc ``malloc_trim``): otherwise a stage reusing memory an
    earlier stage freed would show no growth at all.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, size: int, repeats: int) -> float:
    """The device's plain float32 matmul rate: ``repeats`` square products of ``size``, after a warm-up."""
    with torch.inference_mode():
        a = torch.randn(size, size, device=device)
        b = torch.randn(size, size, device=device)
        out = torch.empty(size, size, device=device)
        torch.mm(a, b, out=out)
        sync(device)
        began = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b, out=out)
        sync(device)
        seconds = time.perf_counter() - began
    return 2 * size**3 * repeats / seconds / 1e12


def scoring_only(users: np.ndarray, items: np.ndarray, k: int, device: torch.device, max_chunk_bytes: int) -> float:
    """Seconds for exhaustive_top_k's block products alone (same blocks, no top-k, factors already on the device)."""
    user_chunk, item_chunk = plan_chunks(users.shape[0], items.shape[0], k, max_chunk_bytes)
    with torch.inference_mode():
        users_t, items_t = torch.from_numpy(users).to(device), torch.from_numpy(items).to(device)
        buffer = torch.empty(min(user_chunk, users.shape[0]) * min(item_chunk, items.shape[0]), device=device)
        sync(device)
        began = time.perf_counter()
        for start in range(0, users.shape[0], user_chunk):
            chunk = users_t[start : start + user_chunk]
            for first in range(0, items.shape[0], item_chunk):
                part = items_t[first : first + item_chunk]
                torch.mm(chunk, part.T, out=buffer[: chunk.shape[0] * part.shape[0]].view(chunk.shape[0], -1))
        sync(device)
        return time.perf_counter() - began


# --- ranking capacity ------------------------------------------------------------------------------------------


def rank_timed(ranker, candidates_many, models, users, weights, now, clock, fused=None):
    """Rank ``users`` with ``ranker``, gathering through ``candidates_many(model, users, now)``; add each stage's
    seconds (and each source's) to ``clock``; the lists. With ``fused`` (a fused recommender with a ready learned
    ranker), also time what a worker does with the same candidates: the bandit's list and the learned ranker's
    (``clock["serve"]``)."""
    began, cpu = time.perf_counter(), time.process_time()
    gathered = {}
    for name, model in models.items():
        start = time.perf_counter()
        gathered[name] = candidates_many(model, users, now)
        clock[f"source:{name}"] = clock.get(f"source:{name}", 0.0) + time.perf_counter() - start
    gathered_at = time.perf_counter()
    prepared = ranker.prepare(models, users, now, gathered=gathered)
    prepared_at = time.perf_counter()
    lists = ranker.fuse(prepared, weights)
    done = time.perf_counter()
    clock["cpu"] = clock.get("cpu", 0.0) + time.process_time() - cpu
    if fused is not None:
        served = fused.recommend(models, users, now, prepared=prepared)
        clock["serve"] = clock.get("serve", 0.0) + time.perf_counter() - done
        assert all(s.ranker == "learned" for s in served)
    for stage, seconds in zip(
        STAGES, (gathered_at - began, prepared_at - gathered_at, done - prepared_at), strict=True
    ):
        clock[stage] = clock.get(stage, 0.0) + seconds
    return lists


def same_lists(a, b) -> bool:
    return a.item_ids == b.item_ids and a.items == b.items and a.source_lists == b.source_lists


def capacity_run(path: Path, args) -> None:
    from fusionrec.contracts.settings import Settings
    from fusionrec.producers.datasets import read_dataset
    from fusionrec.streams.state import build_fusion, build_models, build_ranker

    sys.path.insert(0, str(REPO))
    from tests.unit.ranker_reference import ReferenceRanker, reference_candidates_many

    settings = Settings()
    events = read_dataset(path).events
    models = build_models(settings, 0)
    warm = int(len(events) * args.warm)
    learn_began = time.perf_counter()
    for model in models.values():
        model.learn_many(events[:warm])
    learn_seconds = time.perf_counter() - learn_began
    new = build_ranker(settings.ranker.model_copy(update={"device": "cpu"}))
    old = ReferenceRanker(new.k, new.candidates, new.category_cap, new.normalise, "cpu", new.max_chunk_bytes)
    paths = {
        "old (per candidate)": (
            old,
            lambda model, users, now: reference_candidates_many(model, users, old.candidates, now, old.device),
        ),
        "new (batched)": (
            new,
            lambda model, users, now: model.candidates_many(
                users, new.candidates, now, device=new.device, max_chunk_bytes=new.max_chunk_bytes
            ),
        ),
    }
    clocks = {label: {} for label in paths}
    # what a worker serves: the bandit's list and the learned ranker's from the same candidates (a ready ranker:
    # its cost does not depend on what it has learned)
    fused = build_fusion(settings.replace(ranker_learned_min_lists=0, ranker_device="cpu"), 0, new)
    equal = {name: 1.0 / len(models) for name in models}
    rest = events[warm:]
    ranked = batches = differing = 0
    for n, start in enumerate(range(0, len(rest), args.block)):
        block = rest[start : start + args.block]
        for model in models.values():
            model.learn_many(block)
        now = max(model.clock_ms for model in models.values())
        users = list(dict.fromkeys(event.user_id for event in block))
        for first in range(0, len(users), args.batch):
            chunk = users[first : first + args.batch]
            weights = [dict(equal) for _ in chunk]  # one mapping per user, as the bandit's pulls are
            order = list(paths) if n % 2 == 0 else list(paths)[::-1]
            lists = {
                label: rank_timed(
                    *paths[label],
                    models,
                    chunk,
                    weights,
                    now,
                    clocks[label],
                    fused if label.startswith("new") else None,
                )
                for label in order
            }
            one, other = lists.values()
            differing += sum(not same_lists(a, b) for a, b in zip(one, other, strict=True))
            ranked += len(chunk)
            batches += 1
    catalogue = {name: model.n_items for name, model in models.items()}
    print(
        f"\n{path.name}: {len(events):,} events, {warm:,} learned first ({learn_seconds:.1f} s), then {len(rest):,} in "
        f"blocks of {args.block}; {ranked:,} users ranked in {batches:,} batches (mean {ranked / max(batches, 1):.0f} "
        f"users); catalogue {catalogue['cf']:,} items (CF); k={new.k}, candidates={new.candidates}, "
        f"category_cap={new.category_cap}, normalise={new.normalise}"
    )
    print(
        f"{'path':<22}{'users/s':>10}{'us/user':>10}"
        + "".join(f"{stage:>14}" for stage in STAGES)
        + f"{'per CPU-s':>12}"
    )
    for label, clock in clocks.items():
        total = sum(clock[stage] for stage in STAGES)
        shares = "".join(
            f"{clock[stage] / ranked * 1e6:>7.0f} ({100 * clock[stage] / total:>2.0f}%)" for stage in STAGES
        )
        print(
            f"{label:<22}{ranked / total:>10,.0f}{total / ranked * 1e6:>10.0f}{shares}{ranked / clock['cpu']:>12,.0f}"
        )
    (old_clock, new_clock) = clocks.values()
    speedup = sum(old_clock[s] for s in STAGES) / sum(new_clock[s] for s in STAGES)
    print(f"speed-up {speedup:.2f}x; lists differing between the paths: {differing:,} of {ranked:,}")
    served = sum(new_clock[s] for s in STAGES[:2]) + new_clock["serve"]
    print(
        f"served as a worker does (new gather + prepare, then bandit fusion and the learned ranker): "
        f"{ranked / served:,.0f} users/s, {served / ranked * 1e6:.0f} us/user, of which bandit + learned "
        f"{new_clock['serve'] / ranked * 1e6:.0f} us/user"
    )
    per_source = [
        f"{name} {old_clock[f'source:{name}'] / ranked * 1e6:.0f} -> {new_clock[f'source:{name}'] / ranked * 1e6:.0f}"
        for name in models
    ]
    print("gather per source, us/user (old -> new): " + ", ".join(per_source))


def evaluate_main(path: Path) -> None:
    """``evaluate`` on ``path`` with the reference's prepare, fuse and candidate code patched in, then without."""
    import gc

    from fusionrec.apps.evaluation import EvalConfig, evaluate
    from fusionrec.contracts.settings import Settings
    from fusionrec.models import CategoryAffinity, MatrixFactorization, covisit, recent
    from fusionrec.models.ranker import FusionRanker
    from fusionrec.producers.datasets import read_dataset

    sys.path.insert(0, str(REPO))
    from tests.unit import ranker_reference as ref

    torch.set_num_threads(1)
    events = read_dataset(path).events
    batched = (FusionRanker.prepare, FusionRanker.fuse, MatrixFactorization.candidates_many)
    batched += (CategoryAffinity.candidates, covisit.top_k, recent.top_k)

    def cf_candidates_many(model, users, k, now_ms=None, *, device=None, max_chunk_bytes=None):
        del now_ms  # the CF model has no time decay
        chosen = torch.device("cpu") if device is None else torch.device(device)
        return ref._cf_candidates_many(model, users, k, chosen, max_chunk_bytes or model.chunk_bytes)

    def category_candidates(model, user, k, now_ms=None):
        del now_ms  # nor has the category model
        return ref._category_candidates(model, user, k)

    def patch(old: bool) -> None:
        if old:
            FusionRanker._old_normalised = ref.ReferenceRanker._old_normalised
            members = (ref.ReferenceRanker.prepare, ref.ReferenceRanker.fuse, cf_candidates_many)
            members += (category_candidates, ref.top_k, ref.top_k)
        else:
            members = batched
        (FusionRanker.prepare, FusionRanker.fuse, MatrixFactorization.candidates_many) = members[:3]
        (CategoryAffinity.candidates, covisit.top_k, recent.top_k) = members[3:]

    hit_rates = {}
    for label, old in (("old (per candidate)", True), ("new (batched)", False)):
        patch(old)
        gc.collect()
        began, cpu = time.perf_counter(), time.process_time()
        report = evaluate(events, EvalConfig(settings=Settings()))
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        hit_rates[label] = {name: variant["all"]["hr@20"] for name, variant in report["variants"].items()}
        print(
            f"{label:<22} {len(events):,} events in {wall:.1f} s: {len(events) / wall:,.0f} events/s "
            f"({len(events) / cpu:,.0f} per CPU-second)"
        )
    patch(False)
    old_hr, new_hr = hit_rates.values()
    print(f"HR@20 the same for every variant ({len(new_hr)}): {old_hr == new_hr}")


def capacity_main(args) -> None:
    from fusionrec.streams.app import tune_runtime

    torch.set_num_threads(1)
    tune_runtime()
    print(
        f"ranking capacity on one CPU thread (torch {torch.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} cores on the machine)"
    )
    for path in args.paths or CAPACITY_DATA:
        capacity_run(Path(path), args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--factors", type=int, default=32)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--max-chunk-mib", type=float, default=64.0, help="exhaustive_top_k's max_chunk_bytes, MiB")
    parser.add_argument(
        "--baseline-users",
        type=int,
        default=None,
        help="run numpy on the first N users only and extrapolate its rate (default: all users)",
    )
    parser.add_argument(
        "--baseline-chunk",
        type=int,
        default=64,
        help="numpy_top_k's user_chunk (64 keeps each product under glibc's 32 MB mmap threshold, "
        "so its memory is reused instead of page-faulted afresh; 1024 was slower here)",
    )
    parser.add_argument("--sample", type=int, default=2000, help="users in the agreement check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--capacity", action="store_true", help="measure ranking capacity (see above) instead")
    parser.add_argument("--evaluate", type=Path, default=None, help="time evaluate on PATH, old path vs new")
    parser.add_argument("paths", nargs="*", type=Path, help="--capacity: event files (default: Taobao, ML-100K)")
    parser.add_argument("--warm", type=float, default=0.8, help="--capacity: share of events learned first")
    parser.add_argument("--block", type=int, default=200, help="--capacity: events per refresh block")
    parser.add_argument("--batch", type=int, default=256, help="--capacity: most users ranked in one call")
    args = parser.parse_args()
    if args.capacity:
        capacity_main(args)
        return
    if args.evaluate is not None:
        evaluate_main(args.evaluate)
        return

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = pick_device(args.device)
    budget = int(args.max_chunk_mib * 2**20)
    rng = np.random.default_rng(args.seed)
    scale = args.factors**-0.5
    users = rng.normal(0.0, scale, (args.users, args.factors)).astype(np.float32)
    items = rng.normal(0.0, scale, (args.items, args.factors)).astype(np.float32)
    n_base = args.users if args.baseline_users is None else min(args.baseline_users, args.users)
    pairs = args.users * args.items
    flop = 2 * pairs * args.factors
    user_chunk, item_chunk = plan_chunks(args.users, args.items, args.k, budget)
    gpu = f"{torch.cuda.get_device_name(device)}, " if device.type == "cuda" else ""
    print(
        f"{args.users:,} users x {args.items:,} items x {args.factors} factors, top-{args.k}; torch "
        f"{torch.__version__} on {device} ({gpu}{threads} CPU threads); numpy {np.__version__}"
    )
    print(
        f"exhaustive_top_k blocks: {user_chunk:,} users x {item_chunk:,} items "
        f"(max_chunk_bytes {budget / 2**20:.0f} MiB); numpy_top_k user_chunk {args.baseline_chunk}"
    )

    exhaustive_top_k(users[:256], items, args.k, device=device, max_chunk_bytes=budget)  # warm-up (threads, CUDA)
    numpy_top_k(users[:256], items, args.k, user_chunk=args.baseline_chunk)

    peak_resets = reset_peak_rss()
    rss0 = status_mb("VmRSS")
    began = time.perf_counter()
    t_scores, t_rows = exhaustive_top_k(users, items, args.k, device=device, max_chunk_bytes=budget)
    t_seconds = time.perf_counter() - began
    t_peak = status_mb("VmHWM") - rss0

    reset_peak_rss()
    rss0 = status_mb("VmRSS")
    began = time.perf_counter()
    n_scores, n_rows = numpy_top_k(users[:n_base], items, args.k, user_chunk=args.baseline_chunk)
    n_measured = time.perf_counter() - began
    n_peak = status_mb("VmHWM") - rss0
    n_seconds = n_measured * args.users / max(n_base, 1)
    extrapolated = n_base < args.users

    score_seconds = scoring_only(users, items, args.k, device, budget)
    peak = matmul_tflops(device, 8192 if device.type == "cuda" else 4096, 20 if device.type == "cuda" else 3)

    label = "numpy matmul + argpartition" + (" (EXTRAPOLATED)" if extrapolated else "")
    print(f"\n{'path':<44}{'wall s':>10}{'users/s':>12}{'pairs/s':>12}{'peak RSS +MB':>14}")
    print(
        f"{'torch exhaustive_top_k (' + device.type + ')':<44}{t_seconds:>10.2f}{args.users / t_seconds:>12,.0f}"
        f"{pairs / t_seconds:>12.3g}{t_peak:>14,.0f}"
    )
    print(f"{label:<44}{n_seconds:>10.2f}{args.users / n_seconds:>12,.0f}{pairs / n_seconds:>12.3g}{n_peak:>14,.0f}")
    if extrapolated:
        print(
            f"  (numpy ran on the first {n_base:,} users in {n_measured:.2f} s; its time for {args.users:,} users "
            "is that rate extrapolated; its peak RSS is for the subset)"
        )
    if not peak_resets:
        print("  (VmHWM could not be reset: the numpy peak is a lower bound taken against the torch stage's peak)")
    print(f"speed-up torch / numpy: {n_seconds / t_seconds:.2f}x")

    sample = np.unique(np.linspace(0, n_base - 1, min(args.sample, n_base)).astype(np.int64))
    same = np.mean([set(a) == set(b) for a, b in zip(t_rows[sample].tolist(), n_rows[sample].tolist(), strict=False)])
    diff = float(np.max(np.abs(t_scores[sample] - n_scores[sample]))) if sample.size else 0.0
    print(
        f"agreement on {sample.size:,} users: identical top-{args.k} sets {100 * same:.2f} %, "
        f"max |score difference| {diff:.2e}"
    )

    print(
        f"\nscoring stage alone (same blocks, no top-k): {score_seconds:.2f} s, {flop / score_seconds / 1e12:.3f} "
        f"TFLOP/s; top-k and merge take the other {max(t_seconds - score_seconds, 0):.2f} s "
        f"({100 * max(t_seconds - score_seconds, 0) / t_seconds:.0f} % of the torch wall time)"
    )
    print(
        f"device plain matmul (square float32 torch.mm): {peak:.3f} TFLOP/s; scoring stage reaches "
        f"{100 * flop / score_seconds / 1e12 / peak:.1f} % of it, the whole top-k pipeline "
        f"{100 * flop / t_seconds / 1e12 / peak:.1f} %"
    )


if __name__ == "__main__":
    main()
