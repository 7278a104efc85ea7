"""`fusionrec pseudonym|forget|dlq`: user pseudonyms, forgetting a user, and the dead letters (docs/privacy.md)."""

from __future__ import annotations

import typer

from fusionrec.apps.cli._app import app, settings


# --- pseudonym ---------------------------------------------------------------------------------------------------
@app.command()
def pseudonym(
    users: list[str] = typer.Argument(..., help="Raw user ids, as the shop sends them."),
) -> None:
    """Print the pseudonym the worker stores each user under (one per line): the key of their list in Redis
    (FUSIONREC_REDIS_PREFIX + 'rec:' + pseudonym) and on the recommendations topic.

    Needs FUSIONREC_PRIVACY_USER_KEY; without it, user ids are stored as they are and this prints them unchanged.
    """
    from fusionrec.contracts.privacy import Pseudonymiser

    conf = settings()
    pseudonyms = Pseudonymiser.from_settings(conf)
    if not pseudonyms.enabled:
        typer.secho("FUSIONREC_PRIVACY_USER_KEY is not set: user ids are stored unchanged", err=True)
    for user in users:
        typer.echo(pseudonyms.user(user))
