"""`fusionrec evaluate` end to end on a slice of each shared dataset format, and on a mapped CSV."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import SHARED_DATA, TAOBAO_SLICE, isolated_env

FUSIONREC = [sys.executable, "-m", "fusionrec.apps.cli"]
MOVIELENS = SHARED_DATA / "movielens-100k" / "u.data.gz"


def evaluate(tmp_path, *args):
    out = tmp_path / "report"
    proc = subprocess.run(
        [*FUSIONREC, "evaluate", *args, "--out", str(out), "--no-progress"],
        env=isolated_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    for png in ("hr_over_time.png", "weights_over_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return proc.stdout, report


@pytest.mark.parametrize("dataset", [TAOBAO_SLICE, MOVIELENS], ids=["taobao", "movielens"])
def test_evaluate_a_slice_of_each_format(tmp_path, dataset):
    if not dataset.exists():  # like the other tests on shared data: a missing file is a failure, not a skip
        pytest.fail(f"shared data not found at {dataset} (set FUSIONREC_SHARED_DATA to its folder)")
    stdout, report = evaluate(tmp_path, str(dataset), "--limit", "4000", "--block", "50")
    variants = report["variants"]
    assert {"fused:bandit", "fused:equal", "cf", "covisit", "popular", "trending", "category", "recent"} <= set(
        variants
    )
    for name, groups in variants.items():
        assert set(groups) >= {"all", "kind:new", "kind:repeat", "segment:new", "segment:returning", "coverage"}
        assert groups["all"]["targets"] == report["run"]["targets"], name
        assert 0.0 <= groups["all"]["hr@10"] <= groups["all"]["hr@20"] <= 1.0
    assert report["run"]["events"] == 4000
    assert "HR@20" in stdout and "fused:bandit" in stdout and "popular (baseline)" in stdout
    if dataset == MOVIELENS:
        assert report["rating_mae"]["ratings"] == 4000 and "River BiasedMF" in stdout


def test_evaluate_a_mapped_csv_with_holdout_and_train_until(tmp_path):
    path = tmp_path / "clicks.csv"
    rows = ["visitor,sku,what,when"]
    for n in range(3000):
        rows.append(f"v{n % 90},p{(n * 13) % 120},{'buy' if n % 17 == 0 else 'click'},{1_700_000_000 + n * 5}")
    path.write_text("\n".join(rows) + "\n")
    stdout, report = evaluate(
        tmp_path,
        str(path),
        "--format",
        "csv",
        "--map",
        "user_id=visitor,item_id=sku,type=what,ts=when",
        "--type-map",
        "click=view,buy=purchase",
        "--holdout",
        "0.5",
        "--train-until",
        str(1_700_000_000 + 5000),
        "--block",
        "20",
    )
    assert report["run"]["scored_events"] == 2000
    assert "ab:bandit" in report["variants"] and "A/B:" in stdout


def test_evaluate_explains_bad_input(tmp_path):
    proc = subprocess.run(
        [*FUSIONREC, "evaluate", str(tmp_path / "missing.csv"), "--no-progress"],
        env=isolated_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "error" in proc.stderr


def test_evaluate_the_production_layout_with_event_time_lag(tmp_path):
    """--partitions, --item-sync-ms and --lag-ms reach the run and its report; --block wins over --lag-ms."""
    path = tmp_path / "clicks.csv"
    rows = ["visitor,sku,what,when"]
    for n in range(1500):
        rows.append(
            f"v{(n * 7) % 80},p{(n * 13) % 90},{'buy' if n % 23 == 0 else 'click'},{1_700_000_000_000 + n * 300}"
        )
    path.write_text("\n".join(rows) + "\n")
    mapped = ["--format", "csv", "--ts-unit", "ms", "--map", "user_id=visitor,item_id=sku,type=what,ts=when"]
    mapped += ["--type-map", "click=view,buy=purchase"]
    stdout, report = evaluate(
        tmp_path, str(path), *mapped, "--partitions", "3", "--item-sync-ms", "500", "--lag-ms", "1000"
    )
    run = report["run"]
    assert (run["partitions"], run["item_sync_ms"], run["lag_ms"], run["block"]) == (3, 500, 1000, None)
    assert run["blocks"] == len({(1_700_000_000_000 + n * 300) // 1000 for n in range(1500)})
    assert sum(report["partition_events"]) == 1500 and len(report["partition_events"]) == 3
    assert run["served_targets"] + run["unserved_targets"] == run["targets"]
    assert "3 partitions, shared item side (sync ticks of 500 ms)" in stdout
    assert "every 1,000 ms of event time" in stdout and "scored targets" in stdout and "HR@20 served" in stdout
    _, counted = evaluate(tmp_path, str(path), *mapped, "--partitions", "1", "--lag-ms", "1000", "--block", "100")
    assert (counted["run"]["block"], counted["run"]["lag_ms"], counted["run"]["blocks"]) == (100, None, 15)
    assert counted["run"]["partitions"] == 1 and counted["run"]["item_sync_ms"] == 1000  # the setting
