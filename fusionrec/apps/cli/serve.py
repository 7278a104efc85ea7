"""`fusionrec serve`: the serving API over HTTP (docs/serving.md)."""

from __future__ import annotations

import sys

import typer

from fusionrec.apps.cli._app import app, fail, log, settings

_SERVE_HELP = (
    "Serve the recommendations over HTTP: the API a shop's web front end calls.\n\n"
    "GET /v1/users/{user_id}/recommendations?k= (the user's fused list with each item's sources and its freshness, "
    "or the global trending/popular fallback for a user without one), POST /v1/events (contract events, 202 once "
    "the brokers acknowledged them), POST /v1/rerank (the shop's candidates reordered by the user's fused scores), "
    "GET /v1/items/{item_id}/similar?k= (co-visitation neighbours), GET /v1/weights; /livez, /readyz, /metrics, "
    "the schema at /openapi.json and a live page at /.\n\n"
    "/v1/* needs an API key (header X-API-Key or Authorization: Bearer) when FUSIONREC_API_KEY_HASHES lists SHA-256 "
    "digests (`fusionrec serve --hash-key KEY` prints one); without it the API is open and says so at start. Stop "
    "with Ctrl-C or SIGTERM."
)


@app.command(help=_SERVE_HELP)
def serve(
    host: str | None = typer.Option(None, help="Address to bind (0.0.0.0: every interface) [env FUSIONREC_API_HOST]."),
    port: int | None = typer.Option(None, min=0, max=65535, help="Port to listen on [env FUSIONREC_API_PORT]."),
    hash_key: str | None = typer.Option(
        None,
        "--hash-key",
        metavar="KEY",
        help="Print the SHA-256 digest of KEY (- reads it from stdin) for FUSIONREC_API_KEY_HASHES, and exit.",
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request (uvicorn's access log)."),
) -> None:
    """Run the serving API (help: ``_SERVE_HELP``)."""
    from fusionrec.apps.serve import hash_key as digest
    from fusionrec.apps.serve import run

    if hash_key is not None:
        key = sys.stdin.readline().rstrip("\n") if hash_key == "-" else hash_key
        if not key:
            raise fail("the key is empty", 2)
        typer.echo(digest(key))
        return
    conf = settings(api_host=host, api_port=port)
    log.info(
        "serving API on http://%s:%s (schema /openapi.json), Redis %s, events topic %s",
        conf.api.host,
        conf.api.port,
        conf.redacted()["redis_url"],
        conf.topic.events,
    )
    try:
        run(conf, access_log=access_log)
    except OSError as exc:
        raise fail(f"cannot serve on {conf.api.host}:{conf.api.port}: {exc}") from None
