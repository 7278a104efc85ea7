"""`fusionrec tail|online-eval`: the published lists, and their hit rate against the events that followed."""

from __future__ import annotations

from pathlib import Path

import typer

from fusionrec.apps.cli._app import app, fail, settings

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
    from fusionrec.contracts.privacy import Pseudonymiser
    from fusionrec.contracts.recommendations import encode

    conf = settings()
    wanted = set(map(Pseudonymiser.from_settings(conf).user, users or ()))  # lists are by pseudonym with the key
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

    from fusionrec.consumers.online_eval_service import run_online_eval

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
