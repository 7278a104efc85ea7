"""Faust's per-record delivery against fusionrec's batch delivery, same topic, same work, one run.

Both agents parse every record's JSON and count; nothing else. The stock agent uses ``stream.take(2000,
within=0.05)`` (the usual Faust micro-batching); the batched agent receives whole partition batches
(:mod:`fusionrec.streams.batching`). Each runs in its own process and group, from the start of the same topic.

    python benchmarks/bench_faust_delivery.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

AGENT = r"""
import os, sys, time
sys.path.insert(0, os.environ["REPO"])
import faust, orjson
from fusionrec.streams.batching import BatchingApp, BatchSchema

mode, topic, n = os.environ["MODE"], os.environ["TOPIC"], int(os.environ["N"])
common = dict(broker="kafka://" + os.environ["BOOTSTRAP"], broker_session_timeout=6, broker_heartbeat_interval=1,
              broker_request_timeout=30, web_enabled=False, web_port=int(os.environ["WEB_PORT"]),
              web_bind="127.0.0.1", store="memory://", topic_disable_leader=True, datadir=os.environ["DATADIR"],
              consumer_auto_offset_reset="earliest", broker_max_poll_records=5000)
name = f"bench-{mode}-{time.time_ns()}"
if mode == "batch":
    app = BatchingApp(name, batched_topics={topic}, fetch_max_wait_ms=50, **common)
    source = app.topic(topic, schema=BatchSchema(), internal=False)
else:
    app = faust.App(name, **common)
    source = app.topic(topic, key_serializer="raw", value_serializer="raw", internal=False)
state = {"n": 0, "t0": None}

def done():
    seconds = time.perf_counter() - state["t0"]
    print(f"RESULT {mode} {state['n']} {seconds:.3f}", flush=True)
    os._exit(0)

@app.agent(source)
async def consume(stream):
    if mode == "batch":
        async for batch in stream:
            state["t0"] = state["t0"] or time.perf_counter()
            for record in batch.records:
                orjson.loads(record.value)
            state["n"] += len(batch.records)
            if state["n"] >= n:
                done()
    else:
        async for values in stream.take(2000, within=0.05):
            state["t0"] = state["t0"] or time.perf_counter()
            for value in values:
                orjson.loads(value)
            state["n"] += len(values)
            if state["n"] >= n:
                done()

app.main()
"""


def run_agent(mode: str, settings, n: int, tmp: Path) -> float:
    from fusionrec.infra.stack import free_port

    script = tmp / "agent.py"
    script.write_text(AGENT)
    env = os.environ | {
        "REPO": str(REPO),
        "MODE": mode,
        "TOPIC": settings.topic.events,
        "N": str(n),
        "BOOTSTRAP": settings.kafka.bootstrap_servers,
        "WEB_PORT": str(free_port()),
        "DATADIR": str(tmp / f"faust-{mode}"),
    }
    proc = subprocess.run(
        [sys.executable, str(script), "worker", "-l", "warn", "--without-web"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = next((ln for ln in proc.stdout.splitlines() + proc.stderr.splitlines() if "RESULT" in ln), None)
    if line is None:
        raise RuntimeError(f"{mode} agent gave no result:\n{proc.stderr[-2000:]}")
    count, seconds = line.split()[-2:]
    return int(count) / float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()

    from fusionrec.infra.admin import ensure_topics
    from fusionrec.infra.stack import Stack, private_settings
    from fusionrec.producers.datasets import read_dataset
    from fusionrec.producers.producer import EventProducer
    from fusionrec.producers.replay import replay_events

    events = read_dataset(args.path, limit=args.limit).events
    tmp = Path(tempfile.mkdtemp(prefix="fusionrec-bench-faust-"))
    settings = private_settings(
        tmp / "stack",
        topic_events_partitions=6,
        topic_events=f"bench-faust-{time.time_ns()}",
    )
    stack = Stack(settings)
    stack.up()
    try:
        ensure_topics(settings)
        replay_events(events, EventProducer(settings, validate=False), timestamps="original")
        stock = run_agent("stock", settings, len(events), tmp)
        batch = run_agent("batch", settings, len(events), tmp)
    finally:
        stack.down()
    print(f"\n{len(events):,} events from {args.path.name}, 6 partitions; each agent parses every record's JSON")
    print(f"{'Faust agent, per-record delivery (take 2000)':<48}{stock:>12,.0f} ev/s")
    print(f"{'Faust agent, batch delivery (fusionrec.streams.batching)':<48}{batch:>12,.0f} ev/s")
    print(f"batch / per-record: {batch / stock:.1f}x")


if __name__ == "__main__":
    main()
