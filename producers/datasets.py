"""Readers that turn behaviour files into contract-v1 events, in timestamp order, with stable ids.

Formats:

``taobao``     Alibaba Tianchi UserBehavior: ``user_id,item_id,category_id,behavior,unix_seconds``, no header;
               behaviour ``pv`` → view, ``cart`` → add_to_cart, ``fav`` → favourite, ``buy`` → purchase.
``movielens``  MovieLens ``u.data`` (tab-separated) or ``ratings.dat`` (``::``-separated):
               ``user,item,rating,unix_seconds`` → a ``rate`` event carrying the rating (item genres are not in the
               file; pass them as categories with :func:`load_movielens_genres` if wanted).
``csv``        Any CSV with a header, mapped by a :class:`CsvMapping` (column names, type values, time unit).

Every event gets ``event_id = <format>-<16 hex>``, a hash of the physical line number and the line's bytes, so
replaying the same file twice produces the same ids and a downstream dedup makes the replay idempotent.
Rows that cannot be parsed are reported as :class:`BadRow` (line number and reason) instead of stopping the read.
Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fusionrec.contracts.events import EVENT_TYPES, Event

__all__ = ["FORMATS", "BadRow", "CsvMapping", "Dataset", "detect_format", "read_dataset"]

FORMATS = ("taobao", "movielens", "csv")

TAOBAO_TYPES = {"pv": "view", "cart": "add_to_cart", "fav": "favourite", "buy": "purchase"}


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str
    text: str


@dataclass
class CsvMapping:
    """How a generic CSV maps to the contract.

    ``columns`` maps contract fields (``user_id``, ``item_id``, ``type``, ``ts``, and optionally ``category_id``,
    ``session_id``, ``price``, ``quantity``, ``rating``) to the file's column names; ``types`` maps the file's
    event values to contract types (unmapped values that already are contract types pass through);
    ``ts_unit`` is ``s`` or ``ms``; ``default_type`` is used when no type column is mapped.
    """

    columns: dict[str, str]
    types: dict[str, str] = field(default_factory=dict)
    ts_unit: str = "s"
    default_type: str | None = None
    delimiter: str = ","

    @classmethod
    def parse(cls, spec: str, type_spec: str = "", ts_unit: str = "s", delimiter: str = ",") -> CsvMapping:
        """Build from ``"user_id=visitorid,item_id=itemid,type=event,ts=timestamp"`` style strings."""
        columns = _pairs(spec, "--map")
        types = _pairs(type_spec, "--type-map") if type_spec else {}
        mapping = cls(columns, types, ts_unit, delimiter=delimiter)
        mapping.check()
        return mapping

    def check(self) -> None:
        known = {"user_id", "item_id", "type", "ts", "category_id", "session_id", "price", "quantity", "rating"}
        unknown = set(self.columns) - known
        if unknown:
            raise ValueError(f"unknown contract field(s) in mapping: {sorted(unknown)}; known: {sorted(known)}")
        missing = {"user_id", "item_id", "ts"} - set(self.columns)
        if "type" not in self.columns and not self.default_type:
            missing.add("type")
        if missing:
            raise ValueError(f"mapping lacks required field(s): {sorted(missing)}")
        bad = {v for v in self.types.values() if v not in EVENT_TYPES}
        if bad:
            raise ValueError(f"type map targets unknown event types {sorted(bad)}; known: {sorted(EVENT_TYPES)}")
        if self.ts_unit not in {"s", "ms"}:
            raise ValueError("ts unit must be 's' or 'ms'")


def _pairs(spec: str, flag: str) -> dict[str, str]:
    out = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{flag}: expected key=value pairs separated by commas, got {part!r}")
        out[key.strip()] = value.strip()
    return out


@dataclass
class Dataset:
    """A file read into memory: events in timestamp order plus the rows that could not be read."""

    path: Path
    format: str
    events: list[Event]
    bad_rows: list[BadRow]
    rows_read: int
    was_sorted: bool

    @property
    def span_ms(self) -> int:
        return self.events[-1].ts - self.events[0].ts if self.events else 0


def _open_text(path: Path) -> io.TextIOBase:
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    stream = gzip.open(path, "rb") if gzipped else path.open("rb")  # noqa: SIM115 - the caller closes the wrapper
    return io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")


def _event_id(prefix: str, line_no: int, line: str) -> str:
    digest = hashlib.blake2b(f"{line_no}:{line}".encode(), digest_size=8).hexdigest()
    return f"{prefix}-{digest}"


def detect_format(path: Path) -> str:
    """Guess the format from the first line."""
    with _open_text(path) as fh:
        first = fh.readline().strip()
    if "::" in first:
        return "movielens"
    if first.count("\t") == 3:
        return "movielens"
    parts = first.split(",")
    if len(parts) == 5 and parts[3] in TAOBAO_TYPES:
        return "taobao"
    return "csv"


def _iter_taobao(fh) -> Iterator[tuple[int, str, Event | None, str]]:
    for line_no, line in enumerate(fh, 1):
        text = line.rstrip("\r\n")
        if not text:
            continue
        parts = text.split(",")
        if len(parts) != 5:
            yield line_no, text, None, f"expected 5 comma-separated fields, got {len(parts)}"
            continue
        user, item, category, behaviour, ts = parts
        etype = TAOBAO_TYPES.get(behaviour)
        if etype is None:
            yield line_no, text, None, f"unknown behaviour {behaviour!r}"
            continue
        if not ts.isdigit() or not user or not item:
            yield line_no, text, None, "user, item and a unix-seconds timestamp are required"
            continue
        yield (
            line_no,
            text,
            Event(_event_id("tb", line_no, text), user, item, etype, int(ts) * 1000, category_id=category or None),
            "",
        )


def _iter_movielens(fh) -> Iterator[tuple[int, str, Event | None, str]]:
    for line_no, line in enumerate(fh, 1):
        text = line.rstrip("\r\n")
        if not text:
            continue
        parts = text.split("::") if "::" in text else text.split("\t")
        if len(parts) != 4:
            yield line_no, text, None, f"expected user, item, rating, timestamp; got {len(parts)} fields"
            continue
        user, item, rating, ts = parts
        try:
            value = float(rating)
            stamp = int(ts)
        except ValueError:
            yield line_no, text, None, "rating must be a number and timestamp an integer"
            continue
        yield line_no, text, Event(_event_id("ml", line_no, text), user, item, "rate", stamp * 1000, rating=value), ""


def _iter_csv(fh, mapping: CsvMapping) -> Iterator[tuple[int, str, Event | None, str]]:
    reader = csv.reader(fh, delimiter=mapping.delimiter)
    header = next(reader, None)
    if header is None:
        return
    index = {name.strip(): i for i, name in enumerate(header)}
    absent = [col for col in mapping.columns.values() if col not in index]
    if absent:
        raise ValueError(f"columns {absent} are not in the header {header}")
    cols = {fld: index[col] for fld, col in mapping.columns.items()}
    scale = 1000 if mapping.ts_unit == "s" else 1
    for row in reader:
        line_no = reader.line_num
        text = mapping.delimiter.join(row)
        if not row:
            continue
        try:
            get = {fld: row[i].strip() for fld, i in cols.items()}
        except IndexError:
            yield line_no, text, None, f"row has {len(row)} fields, header has {len(header)}"
            continue
        raw_type = get.get("type", mapping.default_type or "")
        etype = mapping.types.get(raw_type, raw_type)
        if etype not in EVENT_TYPES:
            yield line_no, text, None, f"type {raw_type!r} is not mapped to an event type (use --type-map)"
            continue
        try:
            ts = int(float(get["ts"]) * scale)
            extra = {}
            for name in ("category_id", "session_id"):
                if get.get(name):
                    extra[name] = get[name]
            for name, cast in (("price", float), ("quantity", int), ("rating", float)):
                if get.get(name):
                    extra[name] = cast(get[name])
        except ValueError as exc:
            yield line_no, text, None, f"bad number: {exc}"
            continue
        if not get["user_id"] or not get["item_id"]:
            yield line_no, text, None, "user and item are required"
            continue
        yield (
            line_no,
            text,
            Event(_event_id("csv", line_no, text), get["user_id"], get["item_id"], etype, ts, **extra),
            "",
        )


def read_dataset(
    path: str | Path,
    fmt: str = "auto",
    *,
    mapping: CsvMapping | None = None,
    limit: int | None = None,
) -> Dataset:
    """Read ``path`` into timestamp-ordered events (a stable sort, so equal stamps keep file order).

    ``limit`` keeps the first ``limit`` events *in timestamp order*, so a limited replay is a prefix of the full
    one. Unparseable rows are collected in ``bad_rows``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")
    if fmt == "csv" and mapping is None:
        raise ValueError("the csv format needs a column mapping (--map user_id=...,item_id=...,type=...,ts=...)")
    events: list[Event] = []
    bad: list[BadRow] = []
    rows = 0
    with _open_text(path) as fh:
        rows_iter = (
            _iter_taobao(fh)
            if fmt == "taobao"
            else _iter_movielens(fh)
            if fmt == "movielens"
            else _iter_csv(fh, mapping)
        )  # type: ignore[arg-type]
        for line_no, text, event, reason in rows_iter:
            rows += 1
            if event is None:
                bad.append(BadRow(line_no, reason, text[:200]))
            else:
                events.append(event)
    was_sorted = all(a.ts <= b.ts for a, b in zip(events, events[1:], strict=False))
    if not was_sorted:
        events.sort(key=lambda e: e.ts)
    if limit is not None:
        events = events[:limit]
    return Dataset(path, fmt, events, bad, rows, was_sorted)


def load_movielens_genres(path: str | Path) -> dict[str, str]:
    """Item id → first genre, from ML-100K ``u.item`` (``|``-separated flags) or ML-1M ``movies.dat``."""
    path = Path(path)
    genres: dict[str, str] = {}
    text = path.read_bytes().decode("latin-1")
    if "::" in text.split("\n", 1)[0]:
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) == 3:
                genres[parts[0]] = parts[2].split("|")[0]
        return genres
    names = [
        "unknown",
        "Action",
        "Adventure",
        "Animation",
        "Children's",
        "Comedy",
        "Crime",
        "Documentary",
        "Drama",
        "Fantasy",
        "Film-Noir",
        "Horror",
        "Musical",
        "Mystery",
        "Romance",
        "Sci-Fi",
        "Thriller",
        "War",
        "Western",
    ]
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) >= 24:
            flags = parts[5:24]
            first = next((names[i] for i, flag in enumerate(flags) if flag == "1"), "unknown")
            genres[parts[0]] = first
    return genres
