"""The command line's Typer app, its global flags and what every command shares (settings, errors)."""

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
    "Every setting is an environment variable FUSIONREC_<SECTION>_<KEY> (see `fusionrec config --env`); the global "
    "flags below override the most common ones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts say "[env FUSIONREC_…]" and "[default …]": plain text, not Rich markup (which would eat them).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
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


def settings(**overrides: Any) -> Settings:
    """Settings from the environment, the global flags and a command's own ``overrides`` (flat names, ``None``
    skipped); exits with the reasons when they are invalid."""
    try:
        loaded = load_settings(**_overrides, **{k: v for k, v in overrides.items() if v is not None})
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
