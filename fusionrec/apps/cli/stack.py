"""`fusionrec up|down|status|topics|config`: the embedded stack, the topics and the settings."""

from __future__ import annotations

import typer

from fusionrec.apps.cli._app import app, fail, settings
from fusionrec.contracts.settings import Settings


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

    conf = settings(broker_storage=storage)
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
    from fusionrec.stores.client import connect

    fresh_memory_broker = conf.broker.storage == "memory" and any(
        s.name == "broker" and s.started_now for s in services
    )
    if not fresh_memory_broker:
        return
    client = connect(conf.redis)
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
