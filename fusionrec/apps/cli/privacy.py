"""`fusionrec pseudonym|forget|dlq`: user pseudonyms, forgetting a user, and the dead letters (docs/privacy.md)."""

from __future__ import annotations

import typer

from fusionrec.apps.cli._app import app, fail, settings


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


# --- forget ------------------------------------------------------------------------------------------------------
@app.command()
def forget(
    users: list[str] = typer.Argument(..., help="Raw user ids, as the shop sends them."),
    yes: bool = typer.Option(False, "--yes", help="Do it without asking (scripts, CI)."),
) -> None:
    """Forget users: send a forget_user control record per user to the events topic, keyed by the user, so the
    worker that owns their partition removes their profile, dedup entry, stored list and per-user model state
    when it reaches the record (after the events sent before it; events sent later start a new history).

    Returns once the broker has acknowledged every record; the worker carries them out as it catches up
    (fusionrec_worker_forgotten_users_total, and a log line per user). What users taught the items (popularity,
    co-visitation, item factors) is not per user and stays. See docs/privacy.md.
    """
    from fusionrec.contracts.control import control_record
    from fusionrec.producers.producer import EventProducer

    conf = settings()
    if not yes:
        typer.confirm(f"Forget {len(users)} user(s) for good (topic {conf.topic.events})?", abort=True)
    where: dict[bytes, tuple[int, int]] = {}

    def delivered(err, msg) -> None:
        if err is None:
            where[msg.key()] = (msg.partition(), msg.offset())

    requests = {}
    with EventProducer(conf, on_delivery=delivered) as producer:
        for user in dict.fromkeys(users):
            value = control_record(user)
            requests[user] = value
            producer.send_raw(user.encode(), value)
        producer.flush(30.0)
    failed = [user for user in requests if user.encode() not in where]
    for user in requests:
        if user.encode() in where:
            partition, offset = where[user.encode()]
            typer.echo(f"forget {user}: requested (partition {partition}, offset {offset})")
    if failed:
        raise fail(f"not acknowledged by the broker: {', '.join(failed)} ({producer.stats.errors[:3]})")
