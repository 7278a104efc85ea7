"""`fusionrec replay|consume|evaluate`: events into the topic, read back, and the offline evaluation."""

from __future__ import annotations

from pathlib import Path

import typer

from fusionrec.apps.cli._app import app, fail, settings
from fusionrec.contracts.settings import Settings


# --- replay ------------------------------------------------------------------------------------------------------
@app.command()
def replay(
    path: Path = typer.Argument(..., help="Behaviour file (.csv, .dat, .gz): Taobao, MovieLens, or any CSV."),
    fmt: str = typer.Option("auto", "--format", "-f", help="taobao, movielens, csv or auto (sniffed)."),
    column_map: str = typer.Option(
        "",
        "--map",
        help="csv only: contract field=column pairs, e.g. 'user_id=visitorid,item_id=itemid,type=event,ts=timestamp'.",
    ),
    type_map: str = typer.Option(
        "", "--type-map", help="csv only: file value=event type, e.g. 'addtocart=add_to_cart'."
    ),
    ts_unit: str = typer.Option("s", "--ts-unit", help="csv only: timestamp unit, s or ms."),
    rate: float | None = typer.Option(None, help="Send at this many events per second."),
    speed: float | None = typer.Option(None, help="Time compression: 60 plays an hour of data in a minute."),
    limit: int | None = typer.Option(None, help="Send only the first N events (in time order)."),
    timestamps: str = typer.Option(
        "wallclock", help="wallclock: stamp events when sent (live-like); original: keep the file's times."
    ),
    topic: str | None = typer.Option(None, help="Target topic [default: FUSIONREC_TOPIC_EVENTS]."),
    progress: bool = typer.Option(True, help="Show a progress bar (on a terminal)."),
) -> None:
    """Stream a real dataset into the events topic in timestamp order, with stable event ids.

    Replaying the same file twice produces the same event ids, so downstream deduplication makes it idempotent.
    """
    if rate is not None and speed is not None:
        raise fail("give --rate or --speed, not both", 2)
    conf = settings()
    result = _replay(conf, path, fmt, column_map, type_map, ts_unit, rate, speed, limit, timestamps, topic, progress)
    if result.failed or result.undelivered:
        raise typer.Exit(1)


def _replay(conf, path, fmt, column_map, type_map, ts_unit, rate, speed, limit, timestamps, topic, progress):

    from fusionrec.producers.datasets import CsvMapping, read_dataset
    from fusionrec.producers.producer import BrokerUnreachable, EventProducer
    from fusionrec.producers.replay import replay_events

    try:
        mapping = CsvMapping.parse(column_map, type_map, ts_unit) if column_map else None
        dataset = read_dataset(path, fmt, mapping=mapping, limit=limit)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc), 2) from None
    span = dataset.span_ms / 1000
    typer.echo(
        f"read {dataset.rows_read:,} rows of {path} ({dataset.format}): {len(dataset.events):,} events to send, "
        f"{len(dataset.bad_rows):,} unreadable rows; data spans {span:,.0f} s"
        f"{'' if dataset.was_sorted else '; sorted by timestamp'}"
    )
    for bad in dataset.bad_rows[:5]:
        typer.secho(f"  line {bad.line}: {bad.reason}: {bad.text!r}", fg=typer.colors.YELLOW, err=True)
    if not dataset.events:
        raise fail("nothing to send", 1)
    producer = EventProducer(conf, topic=topic, validate=False)
    try:
        producer.check_broker()
    except BrokerUnreachable as exc:
        raise fail(str(exc), 1) from None
    bar = _progress_bar(len(dataset.events), "replay", progress, smoothing=0.1)
    try:
        result = replay_events(
            dataset.events, producer, rate=rate, speed=speed, timestamps=timestamps, progress=bar.update
        )
    finally:
        bar.close()
    colour = typer.colors.GREEN if not (result.failed or result.undelivered) else typer.colors.RED
    typer.secho(
        f"sent {result.sent:,} events to {producer.topic} in {result.seconds:.2f} s ({result.rate:,.0f} ev/s): "
        f"{result.delivered:,} acknowledged, {result.failed:,} failed, {result.undelivered:,} undelivered"
        + (
            f"; producer recreated {result.resets}x, {result.resent:,} re-sent, "
            f"longest stall {result.max_stall_s:.1f} s"
            if result.resets
            else ""
        ),
        fg=colour,
    )
    return result


# --- consume -----------------------------------------------------------------------------------------------------
@app.command()
def consume(
    topic: str | None = typer.Option(None, help="Topic to read [default: the events topic]."),
    max_messages: int | None = typer.Option(None, "--max", help="Stop after this many records."),
    idle: float = typer.Option(5.0, help="Stop when nothing arrives for this many seconds."),
    show: int = typer.Option(3, help="Print the first N records."),
) -> None:
    """Read a topic from the beginning (no consumer group), validate every event and print a summary."""
    _consume(settings(), topic, max_messages, idle, show)


def _consume(conf: Settings, topic: str | None, max_messages: int | None, idle: float, show: int):
    from confluent_kafka import KafkaException
    from tqdm import tqdm

    from fusionrec.consumers.reader import read_topic, summarize_events

    topic = topic or conf.topic.events
    shown = []

    def records():
        for record in read_topic(conf, topic, max_messages=max_messages, idle_timeout=idle):
            if len(shown) < show:
                shown.append(record)
            yield record

    bar = tqdm(total=max_messages, unit="ev", unit_scale=True, desc="consume", disable=None)
    try:
        summary = summarize_events(records(), on_record=lambda: bar.update(1))
    except KafkaException as exc:
        raise fail(str(exc)) from None
    finally:
        bar.close()
    for partition, offset, key, value in shown:
        typer.echo(f"  p{partition}@{offset} key={key!r} {value[:160]!r}")
    typer.echo(
        f"read {summary.records:,} records from {topic} in {summary.seconds:.2f} s ({summary.rate:,.0f} rec/s): "
        f"{summary.valid:,} valid, {summary.invalid:,} invalid, {summary.duplicates:,} duplicate event ids, "
        f"{len(summary.users):,} users, {len(summary.items):,} items"
        + (f", {summary.controls:,} control records (forget requests)" if summary.controls else "")
    )
    if summary.by_type:
        typer.echo("  by type: " + ", ".join(f"{t}={n:,}" for t, n in summary.by_type.most_common()))
        typer.echo("  by partition: " + ", ".join(f"{p}={n:,}" for p, n in sorted(summary.by_partition.items())))
    return summary


# --- evaluate ----------------------------------------------------------------------------------------------------
def _parse_time(value: str) -> int:
    """Epoch seconds, epoch milliseconds (from 10^11 on: as seconds that would be after the year 5000) or an ISO-8601
    time (UTC unless it says otherwise) → ms."""
    import datetime as dt

    text = value.strip()
    if text.isdigit():
        number = int(text)
        return number if number >= 10**11 else number * 1000
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise fail(
            f"--train-until {value!r}: give epoch seconds, epoch ms or an ISO time like 2017-11-26T10:00", 2
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


@app.command()
def evaluate(
    path: Path = typer.Argument(..., help="Behaviour file (.csv, .dat, .gz): Taobao, MovieLens, or any CSV."),
    fmt: str = typer.Option("auto", "--format", "-f", help="taobao, movielens, csv or auto (sniffed)."),
    column_map: str = typer.Option("", "--map", help="csv only: contract field=column pairs (see `replay --help`)."),
    type_map: str = typer.Option("", "--type-map", help="csv only: file value=event type pairs."),
    ts_unit: str = typer.Option("s", "--ts-unit", help="csv only: timestamp unit, s or ms."),
    limit: int | None = typer.Option(None, help="Only the first N events (in time order)."),
    ks: str = typer.Option("10,20", "--k", help="Cut-offs, comma-separated; lists are as long as the largest."),
    partitions: int | None = typer.Option(
        None,
        min=1,
        help="Partitions of the production layout: users placed by murmur2 of user_id, one model state and bandit "
        "per partition [default: FUSIONREC_TOPIC_EVENTS_PARTITIONS, 6].",
    ),
    item_sync_ms: int | None = typer.Option(
        None,
        min=0,
        help="Sync tick of the item side shared by all partitions, in ms of event time; 0: each partition keeps "
        "its own item side, learned from its users only (the layout before 0.2) [default: "
        "FUSIONREC_MODEL_ITEM_SYNC_MS, 1000].",
    ),
    lag_ms: int | None = typer.Option(
        None,
        min=1,
        help="A list's lag in event time: lists are refreshed once per window of this many ms of event time "
        "[default: FUSIONREC_RANKER_INTERVAL_MS, 200].",
    ),
    block: int | None = typer.Option(
        None,
        min=1,
        help="Refresh every N events instead (count-based blocks, the protocol before 0.2); wins over --lag-ms.",
    ),
    warmup: int = typer.Option(0, min=0, help="Learn the first N events without scoring them."),
    train_until: str | None = typer.Option(
        None,
        help="Learn events before this time without scoring them (epoch s/ms or ISO), to reproduce a "
        "published train/test split.",
    ),
    holdout: float = typer.Option(
        0.0,
        min=0.0,
        max=1.0,
        help="A/B: this fraction of users (hash of user_id, as in the worker's "
        "FUSIONREC_FUSION_HOLDOUT) gets fixed equal weights; both arms are reported.",
    ),
    session_gap: float | None = typer.Option(
        None,
        help="Session-aware mode: a user's events more than this many seconds apart start a new session, "
        "and sessions stand in for users (for click-streams).",
    ),
    out: Path = typer.Option(Path("evaluation"), help="Directory for report.json and the PNG plots."),
    device: str | None = typer.Option(None, help="Ranker device: auto, cpu or cuda [env FUSIONREC_RANKER_DEVICE]."),
    torch_threads: int = typer.Option(
        1, min=1, help="Torch threads of the CPU ranker: refreshes rank a few users at a time, fastest on one."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar (on a terminal)."),
) -> None:
    """Prequential evaluation (test, then train) of every source, equal-weight fusion and bandit fusion.

    Replays the file in time order through the production models, bandit and ranker in-process (no broker or Redis
    needed), laid out as in production: users on --partitions partitions (murmur2 of user_id), each with its own
    models and bandit, and one item side shared by all of them, applied in sync ticks of --item-sync-ms. Events are
    cut into refresh blocks of --lag-ms of event time (or of --block events): before learning a block, every target
    event is checked against the user's lists in effect; then the block is learned and the active users' lists
    refreshed, as the worker does. Prints the scored targets, the served share and HR over served targets, a
    summary table, and writes OUT/report.json, OUT/hr_over_time.png and OUT/weights_over_time.png. The protocol is
    in docs/evaluation.md. Ranker and bandit settings come from FUSIONREC_RANKER_* and FUSIONREC_FUSION_*.
    """

    from fusionrec.apps.evaluation import EvalConfig, rating_mae
    from fusionrec.apps.evaluation import evaluate as run_evaluation
    from fusionrec.apps.evaluation_report import format_summary, format_table, write_report
    from fusionrec.producers.datasets import CsvMapping, read_dataset

    conf = settings(ranker_device=device)
    try:
        cutoffs = tuple(sorted({int(k) for k in ks.split(",") if k.strip()}))
    except ValueError:
        raise fail(f"--k {ks!r}: give comma-separated integers, e.g. 10,20", 2) from None
    if not cutoffs or cutoffs[0] < 1:
        raise fail("--k needs at least one cut-off >= 1", 2)
    try:
        mapping = CsvMapping.parse(column_map, type_map, ts_unit) if column_map else None
        dataset = read_dataset(path, fmt, mapping=mapping, limit=limit)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc), 2) from None
    if not dataset.events:
        raise fail(f"no events could be read from {path}", 1)
    typer.echo(
        f"read {len(dataset.events):,} events of {path} ({dataset.format}); {len(dataset.bad_rows):,} unreadable rows"
    )
    import torch

    torch.set_num_threads(torch_threads)
    config = EvalConfig(
        ks=cutoffs,
        block=block,
        lag_ms=lag_ms,
        partitions=partitions,
        item_sync_ms=item_sync_ms,
        warmup=warmup,
        train_until=_parse_time(train_until) if train_until else None,
        holdout=holdout,
        session_gap_ms=int(session_gap * 1000) if session_gap else None,
        settings=conf,
    )
    bar = _progress_bar(len(dataset.events), "evaluate", progress, smoothing=0.05)
    try:
        report = run_evaluation(dataset.events, config, progress=bar.update)
    finally:
        bar.close()
    report["dataset"] = {"path": str(path), "format": dataset.format, "events": len(dataset.events)}
    mae = rating_mae(dataset.events)
    if mae is not None:
        report["rating_mae"] = mae
    typer.echo("\n" + format_summary(report))
    typer.echo(format_table(report))
    ratio, learned = report.get("fusion_vs_best_single"), report.get("learned_vs_best_single")
    if ratio is not None and learned is not None:
        typer.echo(
            f"\nHR@{max(cutoffs)} / best single source ({report['best_single']}): learned ranker {learned:.2f}x, "
            f"bandit fusion {ratio:.2f}x"
        )
    if mae is not None:
        typer.echo(
            f"rating MAE (progressive validation, {mae['ratings']:,} ratings): fusionrec CF "
            f"{mae['mae']['cf']:.4f}, River BiasedMF {mae['mae']['river']:.4f}"
        )
    if holdout > 0:
        arms = report["variants"]
        typer.echo(
            "A/B: treatment arm (learned ranker; bandit fusion until it is ready) "
            f"HR@{max(cutoffs)} {arms['ab:bandit']['all'][f'hr@{max(cutoffs)}']:.4f} "
            f"({arms['ab:bandit']['all']['targets']:,} targets), fixed arm "
            f"{arms['ab:fixed']['all'][f'hr@{max(cutoffs)}']:.4f} ({arms['ab:fixed']['all']['targets']:,})"
        )
    for written in write_report(report, out):
        typer.echo(f"wrote {written}")


def _progress_bar(total: int, desc: str, progress: bool, smoothing: float):
    """A bar of events, shown on a terminal only (``progress`` False: never)."""
    from tqdm import tqdm

    return tqdm(
        total=total, unit="ev", unit_scale=True, desc=desc, disable=None if progress else True, smoothing=smoothing
    )
