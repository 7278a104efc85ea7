"""The ``fusionrec`` command line: thin wrappers that parse flags, build settings and call the library."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import typer

from fusionrec import __version__
from fusionrec.contracts.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    help="fusionrec: streaming, real-time fused recommendations for shops, on Kafka.\n\n"
    "Every setting is an environment variable FUSIONREC_<NAME> (see `fusionrec config`); the global flags below "
    "override the most common ones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("fusionrec")

_overrides: dict[str, Any] = {}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fusionrec {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    bootstrap_servers: str | None = typer.Option(
        None, "--bootstrap-servers", "-b", help="Kafka host:port list [env FUSIONREC_KAFKA_BOOTSTRAP_SERVERS]."
    ),
    redis_url: str | None = typer.Option(None, "--redis-url", help="Redis URL [env FUSIONREC_REDIS_URL]."),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="PID files, logs, embedded data [env FUSIONREC_STATE_DIR]."
    ),
    log_level: str | None = typer.Option(None, "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),  # noqa: ARG001 - read by the eager callback
) -> None:
    """fusionrec command line."""
    for key, value in (
        ("kafka_bootstrap_servers", bootstrap_servers),
        ("redis_url", redis_url),
        ("state_dir", state_dir),
        ("log_level", log_level.upper() if log_level else None),
    ):
        if value is not None:
            _overrides[key] = value


def settings() -> Settings:
    """Settings from the environment and the global flags; exits with the reasons when they are invalid."""
    try:
        loaded = load_settings(**_overrides)
    except SettingsError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=loaded.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger().setLevel(loaded.log_level)
    return loaded


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


# --- embedded stack ----------------------------------------------------------------------------------------------
def _print_services(services) -> None:
    for svc in services:
        colour = {"running": typer.colors.GREEN, "external": typer.colors.CYAN}.get(svc.state, typer.colors.YELLOW)
        pid = f" pid {svc.pid}" if svc.pid else ""
        extra = f"  ({svc.detail})" if svc.detail else ""
        logf = f"  log {svc.log_file}" if svc.log_file else ""
        typer.echo(f"{svc.name:<7} {typer.style(f'{svc.state:<8}', fg=colour)} {svc.address}{pid}{extra}{logf}")


@app.command()
def up(
    storage: str | None = typer.Option(
        None, help="Broker storage: memory or s3 (durable across broker restarts) [env FUSIONREC_BROKER_STORAGE]."
    ),
    topics: bool = typer.Option(True, help="Also create fusionrec's topics."),
) -> None:
    """Start the embedded broker (Tansu) and Redis where none is reachable; wait until both are healthy.

    Idempotent: services already running (ours or not) are left as they are. Only loopback addresses are started.
    """
    from fusionrec.infra.stack import Stack, StackError

    if storage:
        _overrides["broker_storage"] = storage
    conf = settings()
    try:
        services = Stack(conf).up()
    except StackError as exc:
        raise fail(str(exc)) from None
    _print_services(services)
    if topics:
        _topics(conf, quiet=True)
    _warn_stale_state(conf, services)


def _warn_stale_state(conf: Settings, services) -> None:
    """A memory broker started just now holds no events, so worker state already in Redis describes another
    topic's offsets: say so (a worker would wait for offsets the new topic has not reached)."""
    import redis

    fresh_memory_broker = conf.broker.storage == "memory" and any(
        s.name == "broker" and s.started_now for s in services
    )
    if not fresh_memory_broker:
        return
    client = redis.Redis.from_url(conf.redis.url, **conf.redis.client_kwargs())
    try:
        stale = next(client.scan_iter(match=conf.redis.keys.snapshots(), count=1000), None)
    finally:
        client.close()
    if stale is not None:
        typer.secho(
            f"warning: Redis holds worker state under {conf.redis.prefix!r} from an earlier broker; the "
            "embedded memory broker starts empty. Run `fusionrec rebuild --yes` before starting workers.",
            fg=typer.colors.YELLOW,
            err=True,
        )


@app.command()
def down() -> None:
    """Stop the services `fusionrec up` started (by PID); leave everything else alone."""
    from fusionrec.infra.stack import Stack

    stopped = Stack(settings()).down()
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing to stop")


@app.command()
def status() -> None:
    """Show each service: running (started by fusionrec), external (reachable, someone else's) or down."""
    from fusionrec.infra.stack import Stack

    services = Stack(settings()).status()
    _print_services(services)
    if any(svc.state == "down" for svc in services):
        raise typer.Exit(3)


# --- topics ------------------------------------------------------------------------------------------------------
def _topics(conf: Settings, *, create: bool = True, quiet: bool = False) -> None:
    from confluent_kafka import KafkaException

    from fusionrec.infra.admin import describe_topics, ensure_topics

    try:
        states = ensure_topics(conf) if create else describe_topics(conf)
    except KafkaException as exc:
        raise fail(f"cannot reach the brokers at {conf.kafka.bootstrap_servers}: {exc}") from None
    for state in states:
        if quiet and not state.created and not state.problems:
            continue
        mark = "created" if state.created else ("exists" if state.exists else "missing")
        cfg = ", ".join(f"{k}={v}" for k, v in sorted(state.config.items()))
        typer.echo(
            f"{state.spec.name:<28} {mark:<8} partitions={state.partitions or '-':<4} {cfg}  # {state.spec.purpose}"
        )
        for problem in state.problems:
            typer.secho(f"  warning: {problem}", fg=typer.colors.YELLOW)


@app.command()
def topics(describe: bool = typer.Option(False, "--describe", help="Only describe; create nothing.")) -> None:
    """Create (if missing) and describe fusionrec's topics: events, dead-letter, recommendations, snapshots."""
    _topics(settings(), create=not describe)


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
    from tqdm import tqdm

    from fusionrec.producers.datasets import CsvMapping, read_dataset
    from fusionrec.producers.producer import EventProducer
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
    bar = tqdm(
        total=len(dataset.events),
        unit="ev",
        unit_scale=True,
        desc="replay",
        disable=None if progress else True,
        smoothing=0.1,
    )
    try:
        result = replay_events(
            dataset.events, producer, rate=rate, speed=speed, timestamps=timestamps, progress=bar.update
        )
    finally:
        bar.close()
    colour = typer.colors.GREEN if not (result.failed or result.undelivered) else typer.colors.RED
    typer.secho(
        f"sent {result.sent:,} events to {producer.topic} in {result.seconds:.2f} s ({result.rate:,.0f} ev/s): "
        f"{result.delivered:,} acknowledged, {result.failed:,} failed, {result.undelivered:,} undelivered",
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
    )
    if summary.by_type:
        typer.echo("  by type: " + ", ".join(f"{t}={n:,}" for t, n in summary.by_type.most_common()))
        typer.echo("  by partition: " + ", ".join(f"{p}={n:,}" for p, n in sorted(summary.by_partition.items())))
    return summary


# --- worker ------------------------------------------------------------------------------------------------------
@app.command()
def worker(
    metrics_port: int | None = typer.Option(
        None, help="Serve Prometheus metrics on this port (0: off) [env FUSIONREC_METRICS_PORT]."
    ),
) -> None:
    """Run the stream worker: consume events, keep profiles and online models current (Faust).

    Workers with the same FUSIONREC_WORKER_GROUP split the events topic's partitions between them. Stop with
    Ctrl-C or SIGTERM: state is snapshotted before exit.
    """
    import faust

    from fusionrec.streams.app import create_worker, tune_gc
    from fusionrec.streams.metrics import WorkerMetrics, serve_metrics

    if metrics_port is not None:
        _overrides["metrics_port"] = metrics_port
    conf = settings()
    tune_gc()
    serve_metrics(conf.metrics.port, conf.metrics.bind)
    built = create_worker(conf, WorkerMetrics())
    level = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error"}[conf.log_level]
    log.info(
        "worker %s: events %s, group %s, metrics on %s:%s",
        __version__,
        conf.topic.events,
        conf.worker.group,
        conf.metrics.bind,
        conf.metrics.port,
    )
    faust.Worker(built.app, loglevel=level, quiet=True).execute_from_commandline()


@app.command()
def rebuild(
    yes: bool = typer.Option(False, "--yes", help="Do it without asking (scripts, CI)."),
) -> None:
    """Rebuild all worker state from the events topic: delete profiles, dedup entries and model snapshots.

    Stop every worker first, then start them again: with no snapshot, a worker reads each partition from the start
    of the topic (as far back as its retention reaches).
    """
    from fusionrec.streams.rebuild import rebuild_state

    conf = settings()
    if not yes:
        typer.confirm(
            f"Delete every Redis key under {conf.redis.prefix!r} so the workers replay "
            f"{conf.topic.events} from the start?",
            abort=True,
        )
    report = rebuild_state(conf)
    typer.echo(
        f"deleted {report.keys_deleted:,} Redis keys under {conf.redis.prefix!r}; start the workers to "
        f"rebuild from {conf.topic.events}"
    )


# --- config ------------------------------------------------------------------------------------------------------
@app.command()
def config(
    env: bool = typer.Option(False, "--env", help="List every FUSIONREC_* variable with its description instead."),
) -> None:
    """Print the effective settings (secrets masked) or, with --env, every variable and what it does."""
    if env:
        for name, info in Settings.documented_fields():
            typer.echo(f"FUSIONREC_{name.upper()}\n    {info.description}")
        return
    for name, value in settings().redacted().items():
        typer.echo(f"{name} = {value}")


# --- demo --------------------------------------------------------------------------------------------------------
@app.command()
def demo(
    path: Path = typer.Argument(
        Path("../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz"), help="Dataset to replay."
    ),
    rate: float | None = typer.Option(None, help="Replay rate in events/s (default: as fast as it goes)."),
    limit: int | None = typer.Option(None, help="Replay only the first N events."),
    keep_running: bool = typer.Option(False, help="Leave the embedded stack running afterwards."),
) -> None:
    """The whole pipeline on the embedded stack: start it, create topics, run a stream worker, replay the data,
    wait until every event is applied, and show what was built (profiles, each recommender's lists). Stops what
    it started unless --keep-running."""
    from fusionrec.apps.demo import run_demo
    from fusionrec.infra.stack import StackError

    conf = settings()
    try:
        ok = run_demo(
            conf,
            path,
            rate=rate,
            limit=limit,
            keep_running=keep_running,
            say=typer.echo,
            step=lambda text: typer.secho(text, bold=True),
        )
    except (StackError, FileNotFoundError, ValueError, RuntimeError, TimeoutError) as exc:
        raise fail(str(exc)) from None
    if not ok:
        raise typer.Exit(1)


# --- recommendations: tail and online evaluation -----------------------------------------------------------------
_TAIL_HELP = (
    "Print the lists published on the recommendations topic, with where each item came from.\n\n"
    "One block per list: the user, their segment, the fusion policy's action and its probability, when the newest "
    "event the list reflects happened and when the list was made (local time); then each item with its score and "
    "the share of it each source gave, e.g. `1. i7  0.830  covisit 0.51 + cf 0.32`.\n\n"
    "Reads the topic FUSIONREC_TOPIC_RECOMMENDATIONS without a consumer group, so it never disturbs other readers."
)


@app.command(help=_TAIL_HELP)
def tail(
    users: list[str] | None = typer.Option(
        None, "--user", "-u", help="Only this user's lists; repeat for several users."
    ),
    max_lists: int | None = typer.Option(None, "--max", help="Stop after printing this many lists."),
    idle: float | None = typer.Option(
        None, help="Stop when nothing has arrived for this many seconds (default: follow until Ctrl-C)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print each list as one JSON line (format v1)."),
    from_end: bool = typer.Option(
        False, "--from-end", help="Only lists published from now on (default: from the start of the topic)."
    ),
) -> None:
    """Print users' lists with their attributions (help: ``_TAIL_HELP``)."""
    from confluent_kafka import KafkaException

    from fusionrec.consumers.client import RecommendationsConsumer, format_recommendation
    from fusionrec.contracts.recommendations import encode

    conf = settings()
    wanted = set(users or ())
    printed = 0
    try:
        with RecommendationsConsumer(conf, from_beginning=not from_end, idle_timeout=idle) as lists:
            for rec in lists:
                if wanted and rec.user_id not in wanted:
                    continue
                typer.echo(encode(rec).decode() if as_json else format_recommendation(rec) + "\n")
                printed += 1
                if max_lists is not None and printed >= max_lists:
                    break
            invalid = lists.invalid
    except KafkaException as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        return
    if invalid:
        typer.secho(f"skipped {invalid:,} invalid records", fg=typer.colors.YELLOW, err=True)


_ONLINE_EVAL_HELP = (
    "Measure, live, how often users' next interactions were on the lists they were being served.\n\n"
    "Joins the recommendations topic with the events topic. A target is a view, favourite, cart, purchase or "
    "rating of 4+ of an item new to the user (kind 'new'), or a cart or purchase of an item they knew (kind "
    "'repeat'). Each target is judged against the user's list in effect, the latest one made at or before the "
    "event, for the fused list and for every source's own top K: the sources and the fusion are compared on the "
    "same events.\n\n"
    "Prints the hit rate at K per variant and target kind at the end; Ctrl-C ends a run that has neither --idle "
    "nor --max-events. See docs/consumers.md."
)


@app.command("online-eval", help=_ONLINE_EVAL_HELP)
def online_eval(
    k: int = typer.Option(20, "--k", min=1, help="Judge the first K items of each list (hit rate at K)."),
    metrics_port: int | None = typer.Option(
        None,
        help="Serve Prometheus metrics (fusionrec_online_*) on this port while running "
        "(address: FUSIONREC_METRICS_BIND).",
    ),
    max_events: int | None = typer.Option(None, help="Stop after judging this many events."),
    idle: float | None = typer.Option(
        None, help="Stop when nothing has arrived for this many seconds (default: run until Ctrl-C)."
    ),
    grace_ms: int = typer.Option(
        2000, min=0, help="Judge each event this long after reading it, so the lists made before it have arrived."
    ),
    from_end: bool = typer.Option(False, "--from-end", help="Only judge events published from now on."),
    json_out: Path | None = typer.Option(None, help="Also write the summary as JSON to this file."),
) -> None:
    """Hit rate at k of the served lists against the events that followed (help: ``_ONLINE_EVAL_HELP``)."""
    import json
    import signal
    import threading

    from confluent_kafka import KafkaException

    from fusionrec.consumers.online_eval import run_online_eval

    conf = settings()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = run_online_eval(
            conf,
            k=k,
            metrics_port=metrics_port,
            max_events=max_events,
            idle_timeout=idle,
            grace_ms=grace_ms,
            from_beginning=not from_end,
            stop=stop,
        )
    except KafkaException as exc:
        raise fail(str(exc)) from None
    except OSError as exc:  # the metrics port is taken
        raise fail(f"cannot serve metrics on port {metrics_port}: {exc}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _print_online_summary(summary)
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")


def _print_online_summary(summary: dict) -> None:
    def rate(cell: dict) -> str:
        return "-" if cell["hit_rate"] is None else f"{cell['hit_rate']:.3f}"

    consumed = summary["consumed"]
    k = summary["k"]
    typer.echo(
        f"read {consumed['events']:,} events ({consumed['invalid_events']:,} invalid records skipped) and "
        f"{summary['lists']:,} lists: {summary['targets']:,} targets judged, {summary['unserved']:,} "
        "unserved (no list in effect)"
    )
    typer.echo(
        f"{'variant':<12} {'targets':>8} {'hits':>7} {f'HR@{k}':>7}   {'new (hits/targets HR)':<24} "
        "repeat (hits/targets HR)"
    )
    for variant, cell in summary["variants"].items():
        new, repeat = (f"{c['hits']:,}/{c['targets']:,} {rate(c)}" for c in map(cell["by_kind"].get, ("new", "repeat")))
        typer.echo(f"{variant:<12} {cell['targets']:>8,} {cell['hits']:>7,} {rate(cell):>7}   {new:<24} {repeat}")
    segments = list(summary["variants"]["fused"]["by_segment"])
    if segments:
        typer.echo(
            f"HR@{k} by segment: "
            + "; ".join(
                f"{variant} " + ", ".join(f"{seg} {rate(cell['by_segment'][seg])}" for seg in segments)
                for variant, cell in summary["variants"].items()
            )
        )


# --- evaluate ----------------------------------------------------------------------------------------------------
def _parse_time(value: str) -> int:
    """Epoch seconds, epoch milliseconds (13+ digits) or an ISO-8601 time (UTC unless it says otherwise) → ms."""
    import datetime as dt

    text = value.strip()
    if text.isdigit():
        return int(text) if len(text) >= 13 else int(text) * 1000
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
    block: int = typer.Option(
        200, min=1, help="Events between two list refreshes: the live lag in events (rate x ranker interval)."
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
    progress: bool = typer.Option(True, help="Show a progress bar (on a terminal)."),
) -> None:
    """Prequential evaluation (test, then train) of every source, equal-weight fusion and bandit fusion.

    Replays the file in time order through the production models, bandit and ranker in-process (no broker or Redis
    needed): before learning each block of events, every target event is checked against the user's lists in
    effect; then the block is learned and the active users' lists refreshed, as the worker does. Prints a summary
    table and writes OUT/report.json, OUT/hr_over_time.png and OUT/weights_over_time.png. The protocol is in
    docs/evaluation.md. Ranker and bandit settings come from FUSIONREC_RANKER_* and FUSIONREC_FUSION_*.
    """
    from tqdm import tqdm

    from fusionrec.apps.evaluation import EvalConfig, rating_mae
    from fusionrec.apps.evaluation import evaluate as run_evaluation
    from fusionrec.apps.evaluation_report import format_table, write_report
    from fusionrec.producers.datasets import CsvMapping, read_dataset

    if device is not None:
        _overrides["ranker_device"] = device
    conf = settings()
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
    config = EvalConfig(
        ks=cutoffs,
        block=block,
        warmup=warmup,
        train_until=_parse_time(train_until) if train_until else None,
        holdout=holdout,
        session_gap_ms=int(session_gap * 1000) if session_gap else None,
        settings=conf,
    )
    bar = tqdm(
        total=len(dataset.events),
        unit="ev",
        unit_scale=True,
        desc="evaluate",
        disable=None if progress else True,
        smoothing=0.05,
    )
    try:
        report = run_evaluation(dataset.events, config, progress=bar.update)
    finally:
        bar.close()
    report["dataset"] = {"path": str(path), "format": dataset.format, "events": len(dataset.events)}
    mae = rating_mae(dataset.events)
    if mae is not None:
        report["rating_mae"] = mae
    run = report["run"]
    typer.echo(
        f"\n{run['events']:,} events ({run['targets']:,} targets) in {run['seconds']:.1f} s: "
        f"{run['events_per_s']:,.0f} events/s; block {block}, lists of {max(cutoffs)}"
    )
    typer.echo(format_table(report))
    ratio = report.get("fusion_vs_best_single")
    if ratio is not None:
        typer.echo(f"\nbandit fusion HR@{max(cutoffs)} / best single source ({report['best_single']}): {ratio:.2f}x")
    if mae is not None:
        typer.echo(
            f"rating MAE (progressive validation, {mae['ratings']:,} ratings): fusionrec CF "
            f"{mae['mae']['cf']:.4f}, River BiasedMF {mae['mae']['river']:.4f}"
        )
    if holdout > 0:
        arms = report["variants"]
        typer.echo(
            f"A/B: bandit arm HR@{max(cutoffs)} {arms['ab:bandit']['all'][f'hr@{max(cutoffs)}']:.4f} "
            f"({arms['ab:bandit']['all']['targets']:,} targets), fixed arm "
            f"{arms['ab:fixed']['all'][f'hr@{max(cutoffs)}']:.4f} ({arms['ab:fixed']['all']['targets']:,})"
        )
    for written in write_report(report, out):
        typer.echo(f"wrote {written}")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
