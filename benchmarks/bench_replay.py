"""Produce and consume throughput on the embedded broker, side by side in one run.

Measures, on the same data and broker:
  * replay produce rate (unpaced), with and without contract validation per event;
  * replay at a target rate (default 20k ev/s): the rate actually achieved and whether every event was acknowledged;
  * the broker's raw consume rate (confluent-kafka, no parsing), and consume + contract validation.
Each figure is the median of --repeat runs. Starts its own Tansu + Redis on free ports unless --bootstrap is given.

    python benchmarks/bench_replay.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fusionrec.consumers.reader import read_topic, summarize_events
from fusionrec.contracts.settings import load_settings
from fusionrec.infra.admin import ensure_topics
from fusionrec.infra.stack import Stack, free_port
from fusionrec.producers.datasets import read_dataset
from fusionrec.producers.producer import EventProducer
from fusionrec.producers.replay import replay_events


def produce(settings, topic, events, *, validate, rate=None):
    producer = EventProducer(settings, topic=topic, validate=validate)
    result = replay_events(events, producer, rate=rate, timestamps="wallclock")
    assert result.delivered == len(events), f"only {result.delivered} of {len(events)} acknowledged"
    return result.rate


def consume_raw(settings, topic, n):
    start = time.perf_counter()
    count = 0
    for _ in read_topic(settings, topic, max_messages=n, idle_timeout=5):
        count += 1
    seconds = time.perf_counter() - start
    assert count == n, f"read {count} of {n}"
    return n / seconds


def consume_validated(settings, topic, n):
    start = time.perf_counter()
    summary = summarize_events(read_topic(settings, topic, max_messages=n, idle_timeout=5))
    assert summary.valid == n
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="dataset to replay (Taobao, MovieLens or CSV auto-detected)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N events")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported")
    parser.add_argument("--rate", type=float, default=20_000, help="target rate for the paced run")
    parser.add_argument("--bootstrap", default=None, help="use this broker instead of starting Tansu")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    dataset = read_dataset(args.path, limit=args.limit)
    events = dataset.events
    n = len(events)
    tmp = Path(tempfile.mkdtemp(prefix="fusionrec-bench-"))
    settings = load_settings(
        state_dir=tmp,
        kafka_bootstrap_servers=args.bootstrap or f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        topic_events_partitions=6,
    )
    stack = Stack(settings)
    if not args.bootstrap:
        stack.up()
    try:
        figures: dict[str, list[float]] = {
            k: []
            for k in (
                "produce (no validation)",
                "produce (validated)",
                f"paced at {args.rate:,.0f}/s",
                "consume raw",
                "consume + validate",
            )
        }
        for run in range(args.repeat):
            for validate in (False, True):
                topic = f"bench-{run}-{int(validate)}-{time.time_ns()}"
                ensure_topics(settings.replace(topic_events=topic))
                key = "produce (validated)" if validate else "produce (no validation)"
                figures[key].append(produce(settings, topic, events, validate=validate))
                if not validate:
                    figures["consume raw"].append(consume_raw(settings, topic, n))
                    figures["consume + validate"].append(consume_validated(settings, topic, n))
            topic = f"bench-paced-{run}-{time.time_ns()}"
            ensure_topics(settings.replace(topic_events=topic))
            figures[f"paced at {args.rate:,.0f}/s"].append(
                produce(settings, topic, events, validate=False, rate=args.rate)
            )
            print(f"run {run + 1}/{args.repeat} done", file=sys.stderr)
    finally:
        if not args.bootstrap:
            stack.down()

    medians = {k: statistics.median(v) for k, v in figures.items()}
    print(
        f"\n{n:,} events from {args.path.name}; "
        f"broker {'Tansu (memory) on loopback' if not args.bootstrap else args.bootstrap}; "
        f"{platform.processor() or platform.machine()}, {args.repeat} runs, medians"
    )
    print(f"{'measure':<28}{'events/s':>12}   runs")
    for key, value in medians.items():
        runs = ", ".join(f"{v:,.0f}" for v in figures[key])
        print(f"{key:<28}{value:>12,.0f}   [{runs}]")
    print(
        f"\nraw consume / produce: {medians['consume raw'] / medians['produce (no validation)']:.2f}x; "
        f"validation costs {100 * (1 - medians['produce (validated)'] / medians['produce (no validation)']):.0f}% "
        "of the produce rate"
    )
    if args.json:
        args.json.write_text(json.dumps({"events": n, "medians": medians, "runs": figures}, indent=2))


if __name__ == "__main__":
    main()
