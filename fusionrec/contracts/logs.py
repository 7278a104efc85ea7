"""How fusionrec's processes log: one format for every command (text for people, JSON lines for log shippers), and
librdkafka's own lines through Python logging, one line per condition per window.

librdkafka writes its lines to stderr by itself unless a client is given a :class:`logging.Logger`: then they reach
Python logging from the client's ``poll``. A broker that is down makes every client report every reconnect, so
those lines pass :class:`RepeatFilter`: the first line of a condition goes out, the repeats within
:data:`REPEAT_WINDOW_S` are counted, and the next line of it after the window says how many were held back.
"""

from __future__ import annotations

import logging
import logging.config
import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["KAFKA_LOGGER", "REPEAT_WINDOW_S", "JsonFormatter", "RepeatFilter", "configure", "kafka_logger"]

KAFKA_LOGGER = "fusionrec.kafka"
REPEAT_WINDOW_S = 30.0
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_NUMBERS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Passes the first record of each condition (logger, level, message with its numbers blanked) per window."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S, max_conditions: int = 1000):
        super().__init__()
        self.window_s = window_s
        self.max_conditions = max_conditions
        self._seen: dict[tuple[str, int, str], list[float | int]] = {}  # condition -> [passed at, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        condition = (record.name, record.levelno, _NUMBERS.sub("#", message))
        now = time.monotonic()
        seen = self._seen.get(condition)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            return False
        if seen is None and len(self._seen) >= self.max_conditions:
            self._seen.clear()  # bounded: a flood of distinct conditions is let through, not remembered
        held = 0 if seen is None else int(seen[1])
        self._seen[condition] = [now, 0]
        if held:
            record.msg, record.args = f"{message} ({held} more like this in the last {self.window_s:.0f} s)", None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``exc`` when any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def kafka_logger() -> logging.Logger:
    """The logger every confluent-kafka client of fusionrec is given (``Settings.librdkafka_common``)."""
    logger = logging.getLogger(KAFKA_LOGGER)
    if not any(isinstance(f, RepeatFilter) for f in logger.filters):
        logger.addFilter(RepeatFilter())
    return logger


def config(level: str, fmt: str = "text") -> dict[str, Any]:
    """The :func:`logging.config.dictConfig` of a fusionrec process: one stderr handler at ``level``."""
    formatter = {"()": JsonFormatter} if fmt == "json" else {"format": TEXT_FORMAT, "datefmt": "%H:%M:%S"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"fusionrec": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "fusionrec"}
        },
        "root": {"level": level, "handlers": ["stderr"]},
    }


def configure(level: str, fmt: str = "text") -> None:
    """Set up logging as :func:`config` says (replacing handlers set before), the Kafka filter included."""
    logging.config.dictConfig(config(level, fmt))
    kafka_logger()
