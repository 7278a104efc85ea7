"""The serving API: ``fusionrec serve`` (docs/serving.md)."""

from __future__ import annotations

from fusionrec.apps.serve.app import create_app
from fusionrec.apps.serve.http import hash_key

__all__ = ["create_app", "hash_key", "run"]


def run(settings, *, access_log: bool = False) -> None:
    """Serve ``create_app(settings)`` with uvicorn (uvloop, httptools) on ``settings.api.host:port`` until stopped."""
    import uvicorn

    uvicorn.run(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=access_log,
        log_config=None,  # fusionrec's logging, set up by the CLI
        server_header=False,
        timeout_graceful_shutdown=10,
    )
