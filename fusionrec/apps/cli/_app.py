"""The command line's Typer app, its global flags and what every command shares (settings, errors)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from fusionrec import __version__
from fusionrec.contracts import logs
from fusionrec.contracts.settings import Settings, SettingsError, load_settings, unknown_env

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
_warned: list[bool] = []  # unknown FUSIONREC_* variables are warned about once per process


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
    log_level: str | None = typer.Option(
        None, "--log-level", help="DEBUG, INFO, WARNING or ERROR [env FUSIONREC_LOG_LEVEL]."
    ),
    log_format: str | None = typer.Option(
        None, "--log-format", help="text or json (one object per line) [env FUSIONREC_LOG_FORMAT]."
    ),
    version: bool = typer.Option(  # noqa: ARG001 - read by the eager callback
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """fusionrec command line."""
    for key, value in (
        ("kafka_bootstrap_servers", bootstrap_servers),
        ("redis_url", redis_url),
        ("state_dir", state_dir),
        ("log_level", log_level.upper() if log_level else None),
        ("log_format", log_format.lower() if log_format else None),
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
    logs.configure(loaded.log_level, loaded.log_format)
    if not _warned:
        _warned.append(True)
        for warning in unknown_env():
            log.warning(warning)
    return loaded


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)
