"""The fusionrec CLI as a user runs it: separate processes, real broker and Redis, nothing left behind."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fusionrec.infra.stack import process_start_time
from tests.conftest import TAOBAO_SLICE, isolated_env

FUSIONREC = [sys.executable, "-m", "fusionrec.apps.cli"]


def run(args, env, timeout=120, check=True):
    proc = subprocess.run(FUSIONREC + args, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"fusionrec {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def pids_of(env) -> list[int]:
    run_dir = Path(env["FUSIONREC_STATE_DIR"]) / "run"
    return [json.loads(p.read_text())["pid"] for p in run_dir.glob("*.json")] if run_dir.exists() else []


def gone(pid: int) -> bool:
    return process_start_time(pid) is None


def test_up_status_down_twice_leaves_no_process(tmp_path):
    env = isolated_env(tmp_path)
    for _ in range(2):
        up = run(["up"], env)
        assert up.stdout.count("running") == 2, up.stdout
        started = pids_of(env)
        assert len(started) == 2
        again = run(["up"], env)  # idempotent: same processes
        assert pids_of(env) == started and again.stdout.count("running") == 2
        status = run(["status"], env)
        assert re.search(r"broker\s+running", status.stdout) and re.search(r"redis\s+running", status.stdout)
        down = run(["down"], env)
        assert "stopped: broker, redis" in down.stdout
        assert all(gone(pid) for pid in started)
        after = run(["status"], env, check=False)
        assert after.returncode == 3 and after.stdout.count("down") == 2
    assert "nothing to stop" in run(["down"], env).stdout


@pytest.fixture
def running(tmp_path):
    env = isolated_env(tmp_path)
    run(["up"], env)
    yield env
    run(["down"], env)


def test_replay_full_slice_at_20k_per_second_delivers_every_event(running):
    if not TAOBAO_SLICE.exists():
        pytest.fail(f"shared Taobao slice not found at {TAOBAO_SLICE}")
    out = run(["replay", str(TAOBAO_SLICE), "--rate", "20000"], running, timeout=300)
    assert "110,300 events to send, 0 unreadable rows" in out.stdout
    assert "110,300 acknowledged, 0 failed, 0 undelivered" in out.stdout
    seconds = float(re.search(r"in ([\d.]+) s", out.stdout.split("sent ")[1]).group(1))
    assert seconds >= 110_300 / 20_000 * 0.95  # the rate limit held
    back = run(["consume", "--idle", "3", "--show", "0"], running)
    assert "read 110,300 records" in back.stdout and "110,300 valid, 0 invalid, 0 duplicate" in back.stdout


def test_demo_runs_the_pipeline_and_stops_what_it_started(tmp_path):
    if not TAOBAO_SLICE.exists():
        pytest.fail(f"shared Taobao slice not found at {TAOBAO_SLICE}")
    env = isolated_env(tmp_path)
    report = tmp_path / "report"
    out = run(
        ["demo", str(TAOBAO_SLICE), "--limit", "3000", "--minutes", "0.1", "--out", str(report), "--no-live"],
        env,
        timeout=300,
    )
    assert "demo OK" in out.stdout and "3,000 acknowledged" in out.stdout
    assert "at 500 events/s" in out.stdout  # paced: 3,000 events in 0.1 minutes
    assert "applied 3,000 events, skipped 0 duplicates, dead-lettered 2 malformed messages" in out.stdout
    assert "what the worker built: 6 partition snapshots" in out.stdout and "popular" in out.stdout
    # 3,000 events are few enough for the ranker to publish every changed user's list while the demo waits.
    assert "every applied event is in its user's list" in out.stdout, out.stdout
    assert "published fused list (fr-demo:rec:" in out.stdout and "fusion weights per segment" in out.stdout
    assert "stopped the embedded stack" in out.stdout
    assert "serving API: GET /v1/users/" in out.stdout and "(the user's fused list)" in out.stdout
    assert pids_of(env) == []
    assert "SIGKILL" not in out.stdout + out.stderr and "%3|" not in out.stdout + out.stderr
    summary = json.loads((report / "report.json").read_text())
    assert summary["ok"] and summary["events"] == 3000 and summary["published"] > 0
    assert len(summary["samples"]) >= 5 and summary["samples"][-1]["applied"] >= 3000
    assert summary["online"]["consumed"]["events"] == 3000  # the online evaluation read every event live
    for plot in ("hit_rate.png", "weights.png", "freshness.png"):
        assert (report / plot).read_bytes()[:4] == b"\x89PNG"


def test_bad_input_gets_a_clear_error(tmp_path):
    env = isolated_env(tmp_path)
    missing = run(["replay", str(tmp_path / "nope.csv")], env, check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    bad_env = run(["config"], env | {"FUSIONREC_TOPIC_EVENTS_PARTITIONS": "zero"}, check=False)
    assert bad_env.returncode == 2 and "FUSIONREC_TOPIC_EVENTS_PARTITIONS" in bad_env.stderr
    both = run(["replay", "x", "--rate", "1", "--speed", "1"], env, check=False)
    assert both.returncode == 2 and "not both" in both.stderr


def test_help_and_config_explain_themselves(tmp_path):
    env = isolated_env(tmp_path, FUSIONREC_KAFKA_SASL_PASSWORD="s3cret-pw")
    top = run(["--help"], env).stdout
    for command in ("up", "down", "status", "topics", "replay", "consume", "worker", "rebuild", "config", "demo"):
        assert re.search(rf"\b{command}\b", top)
    assert "--rate" in run(["replay", "--help"], env).stdout
    shown = run(["config"], env).stdout
    assert "kafka_sasl_password = ***" in shown and "s3cret-pw" not in shown
    documented = run(["config", "--env"], env).stdout
    assert "FUSIONREC_KAFKA_BOOTSTRAP_SERVERS" in documented and "FUSIONREC_REDIS_URL" in documented


def test_up_warns_when_redis_holds_state_from_an_earlier_broker(stack, tmp_path):
    import redis

    prefix = f"stale{tmp_path.name[-6:]}:"
    client = redis.Redis.from_url(stack.settings.redis.url)
    client.set(f"{prefix}snap:fusionrec-events:0", b"old")
    env = isolated_env(tmp_path, FUSIONREC_REDIS_URL=stack.settings.redis.url, FUSIONREC_REDIS_PREFIX=prefix)
    try:
        first = run(["up"], env)
        assert "fusionrec rebuild --yes" in first.stderr  # a fresh memory broker next to existing worker state
        assert "fusionrec rebuild" not in run(["up"], env).stderr  # same broker: nothing new to warn about
    finally:
        run(["down"], env)
        client.delete(f"{prefix}snap:fusionrec-events:0")
        client.close()


def test_replay_to_an_unreachable_broker_fails_in_seconds_with_one_clear_message(tmp_path):
    import time

    env = isolated_env(tmp_path)  # nothing listens on its broker port
    data = tmp_path / "u.data"
    data.write_text("".join(f"{u}\t{i}\t4\t{881250949 + i}\n" for u in range(3) for i in range(5)))
    began = time.monotonic()
    proc = run(["replay", str(data)], env, check=False, timeout=60)
    assert time.monotonic() - began < 20
    assert proc.returncode == 1
    assert "no Kafka broker answered at 127.0.0.1:" in proc.stderr
    assert "%3|" not in proc.stderr + proc.stdout  # librdkafka's own lines do not reach the terminal raw
    assert "Traceback" not in proc.stderr


def test_version_json_logs_and_a_misspelled_variable(tmp_path):
    env = isolated_env(tmp_path)
    assert run(["-V"], env).stdout.strip().startswith("fusionrec ")
    proc = run(["--log-format", "json", "config"], env | {"FUSIONREC_RANKERR_K": "5"})
    warning = json.loads(proc.stderr.strip().splitlines()[0])
    assert warning["level"] == "WARNING" and "did you mean FUSIONREC_RANKER_K?" in warning["message"]
    bad_flag = run(["replay", "x", "--rate", "fast"], env, check=False)
    assert bad_flag.returncode == 2 and "Traceback" not in bad_flag.stderr and "--rate" in bad_flag.stderr


def test_demo_paces_no_faster_than_one_worker_keeps_up_with():
    """The CLI's --max-rate default is the demo's own (a literal there: the CLI does not import the demo to start)."""
    import inspect

    from fusionrec.apps.cli.worker import demo
    from fusionrec.apps.demo import DEMO_MAX_RATE

    assert inspect.signature(demo).parameters["max_rate"].default.default == DEMO_MAX_RATE
