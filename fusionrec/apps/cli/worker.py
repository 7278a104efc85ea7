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
        None, help="Serve Prometheus metrics on this port (0: off) [env FUSIONREC_METRICS_PORT]."
    ),
) -> None:
    """Run the stream worker: consume events, keep profiles and online models current (Faust).

    Workers with the same FUSIONREC_WORKER_GROUP split the events topic's partitions between them. Stop with
    Ctrl-C or SIGTERM: state is snapshotted before exit.
    """
    import faust

    from fusionrec.contracts import logs
    from fusionrec.streams.app import create_worker, tune_gc
    from fusionrec.streams.metrics import WorkerMetrics, serve_metrics

    conf = settings(metrics_port=metrics_port)
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
