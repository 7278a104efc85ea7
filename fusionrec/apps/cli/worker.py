"""`fusionrec worker|rebuild|demo`: the stream worker, rebuilding its state, and the whole pipeline at once."""

from __future__ import annotations

from pathlib import Path

import typer

from fusionrec import __version__
from fusionrec.apps.cli._app import app, fail, log, settings


# --- worker ------------------------------------------------------------------------------------------------------
@app.command()
def worker(
    metrics_port: int | None = typer.Option(
        None,
        help="Serve Prometheus metrics (/metrics) and the probes (/livez, /readyz) on this port (0: off) "
        "[env FUSIONREC_METRICS_PORT].",
    ),
) -> None:
    """Run the stream worker: consume events, keep profiles and online models current (Faust).

    Workers with the same FUSIONREC_WORKER_GROUP split the events topic's partitions between them. Stop with
    Ctrl-C or SIGTERM: state is snapshotted before exit.
    """
    import faust

    from fusionrec.contracts import logs
    from fusionrec.streams.app import create_worker, tune_runtime
    from fusionrec.streams.health import Health, serve_health
    from fusionrec.streams.metrics import WorkerMetrics

    conf = settings(metrics_port=metrics_port)
    tune_runtime()
    health = Health()
    serve_health(conf.metrics.port, conf.metrics.bind, health)  # up first: /livez answers while the app builds
    built = create_worker(conf, WorkerMetrics(), health)
    level = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error"}[conf.log_level]
    log.info(
        "worker %s: events %s, group %s, metrics and probes on %s:%s",
        __version__,
        conf.topic.events,
        conf.worker.group,
        conf.metrics.bind,
        conf.metrics.port,
    )
    faust.Worker(
        built.app, loglevel=level, quiet=True, logging_config=logs.config(conf.log_level, conf.log_format)
    ).execute_from_commandline()


@app.command()
def rebuild(
    yes: bool = typer.Option(False, "--yes", help="Do it without asking (scripts, CI)."),
) -> None:
    """Rebuild all worker state from the events topic: delete profiles, dedup entries, model snapshots and the
    group's item-side topic.

    Stop every worker first, then start them again: with no snapshot, a worker reads each partition from the start
    of the topic (as far back as its retention reaches).
    """
    from fusionrec.streams.rebuild import rebuild_state

    conf = settings()
    if not yes:
        typer.confirm(
            f"Delete every Redis key under {conf.redis.prefix!r} and the topic {conf.item_side_topic} so the workers "
            "replay "
            f"{conf.topic.events} from the start?",
            abort=True,
        )
    report = rebuild_state(conf)
    topics = f" and the topic {', '.join(report.topics_deleted)}" if report.topics_deleted else ""
    typer.echo(
        f"deleted {report.keys_deleted:,} Redis keys under {conf.redis.prefix!r}{topics}; start the workers to "
        f"rebuild from {conf.topic.events}"
    )


# --- demo --------------------------------------------------------------------------------------------------------
@app.command()
def demo(
    path: Path = typer.Argument(
        Path("../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz"), help="Dataset to replay."
    ),
    minutes: float = typer.Option(
        1.0, min=0.05, help="Pace the replay so that it takes this long (events stamped as sent, as a live shop's)."
    ),
    rate: float | None = typer.Option(None, min=0, help="Replay at this many events/s instead (0: unpaced)."),
    max_rate: float = typer.Option(
        650.0,
        min=0,
        help="Pace --minutes at most this fast (0: no limit): faster than one worker keeps up with, the demo shows a "
        "backlog instead of a live shop's freshness.",
    ),
    limit: int | None = typer.Option(None, min=1, help="Replay only the first N events."),
    out: Path = typer.Option(Path("build/demo"), help="Where the report (JSON, PNG plots) goes."),
    live: bool | None = typer.Option(
        None, "--live/--no-live", help="Live view while replaying (default: on a terminal; else a line every 10 s)."
    ),
    keep_running: bool = typer.Option(False, help="Leave the embedded stack running afterwards."),
) -> None:
    """The whole pipeline on the embedded stack: start it, create topics, run a stream worker and the online
    evaluation, replay the data paced like a live shop (about a minute by default) with a live view of
    throughput, freshness, online hit rate and the fusion weights moving, then show what was built and write a
    report (JSON and plots). Stops what it started unless --keep-running."""
    from fusionrec.apps.demo import run_demo
    from fusionrec.infra.stack import StackError

    conf = settings()
    try:
        ok = run_demo(
            conf,
            path,
            rate=rate,
            minutes=minutes,
            max_rate=max_rate,
            limit=limit,
            out=out,
            live=live,
            keep_running=keep_running,
            say=typer.echo,
            step=lambda text: typer.secho(text, bold=True),
        )
    except (StackError, FileNotFoundError, ValueError, RuntimeError, TimeoutError) as exc:
        raise fail(str(exc)) from None
    if not ok:
        raise typer.Exit(1)
