"""Logging: librdkafka's repeats held back per condition, JSON lines, typos in FUSIONREC_* variables named."""

from __future__ import annotations

import io
import json
import logging

from confluent_kafka import Producer

from fusionrec.contracts import logs
from fusionrec.contracts.settings import load_settings, unknown_env


def record(message: str, *args, name: str = "fusionrec.kafka", level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, args, None)


def test_repeats_of_a_condition_are_held_back_and_counted_in_the_next_line(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    repeat = logs.RepeatFilter(window_s=30)
    line = "%s [%s] %s"
    assert repeat.filter(record(line, "FAIL", "p#1", "127.0.0.1:1/bootstrap: Connect failed (after 0ms)"))
    for ms in range(1, 50):  # the same condition, numbers aside
        now[0] += 0.1
        assert not repeat.filter(record(line, "FAIL", "p#1", f"127.0.0.1:1/bootstrap: Connect failed (after {ms}ms)"))
    assert repeat.filter(record("another condition"))  # conditions are apart
    now[0] += 30
    after = record(line, "FAIL", "p#1", "127.0.0.1:1/bootstrap: Connect failed (after 3ms)")
    assert repeat.filter(after)
    assert after.getMessage().endswith("(49 more like this in the last 30 s)")
    again = record(line, "FAIL", "p#1", "127.0.0.1:1/bootstrap: Connect failed (after 3ms)")
    assert not repeat.filter(again)


def test_json_lines_carry_level_logger_message_and_exception():
    formatter = logs.JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("fusionrec.worker", logging.ERROR, __file__, 1, "batch %d failed", (7,), sys.exc_info())
    entry = json.loads(formatter.format(rec))
    assert entry["level"] == "ERROR" and entry["logger"] == "fusionrec.worker"
    assert entry["message"] == "batch 7 failed" and "ValueError: boom" in entry["exc"]
    assert entry["ts"].endswith("+00:00")


def test_librdkafka_lines_go_through_python_logging_once_per_condition():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    kafka = logs.kafka_logger()
    kafka.addHandler(handler)
    try:
        # Nothing listens on port 1: librdkafka reports every reconnect attempt.
        producer = Producer(load_settings(kafka_bootstrap_servers="127.0.0.1:1").producer_config())
        producer.produce("t", b"x")
        for _ in range(30):
            producer.poll(0.1)  # logs are served from poll
        producer.purge()
    finally:
        kafka.removeHandler(handler)
    lines = [line for line in stream.getvalue().splitlines() if "Connect to" in line]
    assert len(lines) == 1, stream.getvalue()  # ~3 s of reconnects, one line


def test_a_misspelled_variable_is_named_with_the_closest_setting():
    warnings = unknown_env(
        {
            "FUSIONREC_RANKERR_K": "3",  # a misspelled section: the settings would silently ignore it
            "FUSIONREC_LOGLEVEL": "DEBUG",
            "FUSIONREC_RANKER_K": "3",  # known
            "FUSIONREC_SHARED_DATA": "/data",  # read by the scripts
            "PATH": "/bin",
        }
    )
    assert warnings == [
        "FUSIONREC_LOGLEVEL is not a fusionrec setting and is ignored; did you mean FUSIONREC_LOG_LEVEL?",
        "FUSIONREC_RANKERR_K is not a fusionrec setting and is ignored; did you mean FUSIONREC_RANKER_K?",
    ]
