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
    wait: float = typer.Option(
        0.0, "--wait", min=0.0, help="Then wait up to this many seconds for the workers to have done it (0: don't)."
    ),
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
    if wait:
        waiting = _wait_forgotten(conf, {user: where[user.encode()] for user in requests}, wait)
        if waiting:
            raise fail(f"not carried out within {wait:g} s (is a worker running?): {', '.join(waiting)}")


def _wait_forgotten(conf, requested: dict[str, tuple[int, int]], timeout: float) -> list[str]:
    """Wait until the worker has carried out each request: the user's dedup window (which the request resets)
    stands at or beyond the request's offset. The users still waiting at ``timeout``."""
    import time

    from fusionrec.contracts.privacy import Pseudonymiser
    from fusionrec.stores.client import connect
    from fusionrec.stores.profiles import ProfileStore

    store = ProfileStore.from_settings(conf, connect(conf.redis))
    hidden = Pseudonymiser.from_settings(conf).user
    deadline = time.monotonic() + timeout
    waiting = dict(requested)
    while waiting:
        for user, (partition, offset) in list(waiting.items()):
            window = store.seen(hidden(user))
            if window.partition == partition and window.offset >= offset:
                typer.echo(f"forget {user}: done")
                del waiting[user]
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return list(waiting)


# --- dlq ---------------------------------------------------------------------------------------------------------
dlq = typer.Typer(
    help="The dead-letter topic (FUSIONREC_TOPIC_DEAD_LETTER): list, show and re-drive rejected records.\n\n"
    "A dead letter is named by its position on the topic, PARTITION:OFFSET (or just OFFSET with one partition). "
    "Reads the topic from the start without a consumer group, until nothing arrives for --idle seconds.",
    no_args_is_help=True,
)
app.add_typer(dlq, name="dlq")

_IDLE = typer.Option(2.0, "--idle", help="Stop reading once nothing has arrived for this many seconds.")


def _when(ms: int | None) -> str:
    from datetime import datetime

    return "-" if ms is None else datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _letters(conf, reason: str | None, idle: float) -> list:
    from confluent_kafka import KafkaException

    from fusionrec.consumers.dead_letters import read_dead_letters

    try:
        return list(read_dead_letters(conf, reason=reason, idle_timeout=idle))
    except KafkaException as exc:
        raise fail(str(exc)) from None


@dlq.command("list")
def dlq_list(
    limit: int | None = typer.Option(None, "--limit", min=1, help="Show at most this many (the newest)."),
    reason: str | None = typer.Option(None, "--reason", help="Only letters whose first reason has this code."),
    idle: float = _IDLE,
) -> None:
    """One line per dead letter: position, when it was rejected, its first reason (and how many more), the size of
    the rejected record, and where it came from; then a count by reason."""
    from collections import Counter

    conf = settings()
    entries = _letters(conf, reason, idle)
    shown = entries[-limit:] if limit else entries
    typer.echo(f"{'position':<10} {'rejected at':<19}  {'reason':<22} {'size':>8}  source")
    for e in shown:
        more = f" +{len(e.reasons) - 1}" if len(e.reasons) > 1 else ""
        size = "-" if e.original_size is None else f"{e.original_size:,}"
        source = e.source
        where = f"{source.get('topic', '?')}[{source.get('partition', '?')}]@{source.get('offset', '?')}"
        letter = e.letter or {}
        marks = "".join(f"  {m}: {','.join(letter[m])}" for m in ("truncated", "withheld") if letter.get(m))
        typer.echo(f"{e.position:<10} {_when(e.rejected_at):<19}  {e.reason + more:<22} {size:>8}  {where}{marks}")
    counts = Counter(e.reason for e in entries)
    typer.echo(
        f"{len(entries):,} dead letters"
        + (f" (showing {len(shown):,})" if len(shown) != len(entries) else "")
        + (": " + ", ".join(f"{code} {n:,}" for code, n in counts.most_common()) if counts else "")
    )


@dlq.command("show")
def dlq_show(
    position: str = typer.Argument(..., help="PARTITION:OFFSET, or OFFSET, of the dead letter."),
    idle: float = _IDLE,
) -> None:
    """One dead letter in full: every reason, where it came from, the size and sha256 of the rejected record, its
    key, and its payload (pretty-printed when it is JSON)."""
    import json

    from fusionrec.consumers.dead_letters import select

    conf = settings()
    try:
        found = select(_letters(conf, None, idle), [position])
    except ValueError:
        raise fail(f"{position!r} is not PARTITION:OFFSET or OFFSET") from None
    if not found:
        raise fail(f"no dead letter at {position} on {conf.topic.dead_letter}")
    for entry in found:
        letter = entry.letter
        if letter is None:
            typer.echo(f"{entry.position}: not a dead letter ({entry.size:,} bytes)")
            continue
        source = entry.source
        typer.echo(f"dead letter {entry.position} of {conf.topic.dead_letter}, rejected {_when(entry.rejected_at)}")
        typer.echo(
            f"from {source.get('topic')} partition {source.get('partition')} offset {source.get('offset')}; "
            f"{entry.original_size if entry.original_size is not None else '-'} bytes, "
            f"sha256 {letter.get('original_sha256', '-')}"
        )
        for r in entry.reasons:
            typer.echo(f"  {r.get('code')}{' (' + r['field'] + ')' if r.get('field') else ''}: {r.get('message')}")
        for mark in ("pseudonymised", "truncated", "withheld"):
            if letter.get(mark):
                typer.echo(f"{mark}: {', '.join(letter[mark])}")
        if letter.get("note"):
            typer.echo(f"note: {letter['note']}")
        key = entry.key()
        typer.echo(f"key: {'(none)' if key is None else _text(key)}")
        payload = entry.original()
        if payload is None:
            typer.echo("payload: (none)")
            continue
        try:
            typer.echo("payload:\n" + json.dumps(json.loads(payload), indent=2, ensure_ascii=False))
        except (ValueError, UnicodeDecodeError):
            typer.echo(f"payload ({len(payload):,} bytes, not JSON): {_text(payload)}")


def _text(data: bytes) -> str:
    """Bytes as text when they are printable UTF-8, else base64."""
    import base64

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode()
    return text if text.isprintable() else repr(text)


@dlq.command("redrive")
def dlq_redrive(
    positions: list[str] | None = typer.Argument(None, help="PARTITION:OFFSET or OFFSET of each letter to re-drive."),
    reason: str | None = typer.Option(None, "--reason", help="Every letter whose first reason has this code."),
    all_letters: bool = typer.Option(False, "--all", help="Every letter on the topic."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be re-driven; send nothing."),
    yes: bool = typer.Option(False, "--yes", help="Do it without asking (scripts, CI)."),
    idle: float = _IDLE,
) -> None:
    """Send the original records of the selected dead letters to the events topic again, for the worker to judge
    anew (after a fix, or with raised limits): a record that is still invalid becomes a new dead letter with its
    reasons. Letters that hold only part of the record (truncated, withheld) are skipped, with where to find it.
    The letters themselves stay on the topic: re-driving one twice sends it twice (the worker's dedup by event_id
    then skips the second)."""
    from fusionrec.consumers.dead_letters import redrive, select

    if not positions and reason is None and not all_letters:
        raise fail("say which letters: positions, --reason CODE or --all", 2)
    conf = settings()
    entries = _letters(conf, reason, idle)
    try:
        chosen = select(entries, positions) if positions else entries
    except ValueError:
        raise fail(f"positions must be PARTITION:OFFSET or OFFSET, got {positions}") from None
    if positions and len(chosen) < len(positions):
        missing = sorted(set(positions) - {e.position for e in chosen} - {str(e.offset) for e in chosen})
        typer.secho(f"no dead letter at {', '.join(missing)}", fg=typer.colors.YELLOW, err=True)
    if not chosen:
        typer.echo("nothing to re-drive")
        return
    if not dry_run and not yes:
        typer.confirm(f"Re-drive {len(chosen)} dead letter(s) to {conf.topic.events}?", abort=True)
    results = redrive(conf, chosen, dry_run=dry_run)
    verb = "would re-drive" if dry_run else "re-drove"
    for r in results:
        where = f"partition {r.partition}" if r.partition is not None else "by its key"
        if r.skipped is not None:
            typer.echo(f"{r.entry.position}: not re-driven: {r.skipped}")
        else:
            typer.echo(
                f"{r.entry.position}: {verb} ({r.entry.reason}, {len(r.entry.original() or b''):,} bytes, {where})"
            )
    sent = sum(r.sent for r in results)
    planned = sum(r.skipped is None for r in results)
    typer.echo(f"{verb} {planned if dry_run else sent:,} of {len(results):,} to {conf.topic.events}")
    if not dry_run and sent < planned:
        raise typer.Exit(1)
