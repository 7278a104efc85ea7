"""Settings: env vars parsed and validated at start, secrets never printed, one place for client configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fusionrec.contracts.settings import Settings, SettingsError, load_settings, redact_url

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in list(__import__("os").environ):
        if key.startswith("FUSIONREC_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def test_defaults_and_env(monkeypatch):
    monkeypatch.setenv("FUSIONREC_KAFKA_BOOTSTRAP_SERVERS", "k1:9092, k2:9093")
    monkeypatch.setenv("FUSIONREC_TOPIC_EVENTS_PARTITIONS", "12")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "k1:9092,k2:9093"
    assert settings.kafka.bootstrap_hosts == [("k1", 9092), ("k2", 9093)]
    assert settings.topic.events_partitions == 12
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        settings.topic.events_partitions = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("FUSIONREC_KAFKA_BOOTSTRAP_SERVERS", "nohostport", "is not host:port"),
        ("FUSIONREC_TOPIC_EVENTS_PARTITIONS", "0", "greater than or equal to 1"),
        ("FUSIONREC_TOPIC_EVENTS", "bad topic!", "not a legal Kafka topic name"),
        ("FUSIONREC_REDIS_URL", "http://x", "must start with redis://"),
        ("FUSIONREC_KAFKA_COMPRESSION", "brotli", "Input should be"),
        ("FUSIONREC_KAFKA_SECURITY_PROTOCOL", "SASL_SSL", "needs FUSIONREC_KAFKA_SASL_MECHANISM"),
    ],
)
def test_invalid_values_are_rejected_with_the_variable_named(monkeypatch, var, value, fragment):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert fragment in message
    if "SECURITY" not in var:
        assert var in message


def test_secrets_are_never_printed(monkeypatch):
    monkeypatch.setenv("FUSIONREC_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FUSIONREC_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("FUSIONREC_KAFKA_SASL_USERNAME", "shop")
    monkeypatch.setenv("FUSIONREC_KAFKA_SASL_PASSWORD", "hunter2-kafka")
    monkeypatch.setenv("FUSIONREC_REDIS_URL", "rediss://default:hunter2-redis@cache:6380/1")
    settings = load_settings()
    shown = repr(settings) + str(settings) + str(settings.redacted())
    assert "hunter2" not in shown
    assert settings.redacted()["redis_url"] == "rediss://default:***@cache:6380/1"
    conf = settings.producer_config()
    assert conf["sasl.password"] == "hunter2-kafka"  # passed through to librdkafka, only there
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512" and conf["security.protocol"] == "SASL_SSL"
    kwargs = settings.aiokafka_kwargs()
    assert kwargs["sasl_plain_password"] == "hunter2-kafka" and "ssl_context" in kwargs


def test_invalid_secret_values_are_not_echoed(monkeypatch):
    monkeypatch.setenv("FUSIONREC_REDIS_URL", "redis://u:topsecret@host:notaport/0")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "topsecret" not in str(info.value)


def test_client_configs_carry_tansu_friendly_timings():
    settings = load_settings()
    consumer = settings.consumer_config("g1")
    assert consumer["session.timeout.ms"] == 6000 and consumer["fetch.wait.max.ms"] == 50
    assert consumer["group.id"] == "g1" and consumer["enable.auto.commit"] is False
    producer = settings.producer_config(**{"linger.ms": 20})
    assert producer["linger.ms"] == 20 and producer["acks"] == "all" and producer["enable.idempotence"] is True


def test_a_variable_a_section_does_not_know_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("FUSIONREC_RANKER_INTERVALMS", "100")  # a typo of FUSIONREC_RANKER_INTERVAL_MS
    with pytest.raises(SettingsError, match="FUSIONREC_RANKER_INTERVALMS: Extra inputs are not permitted"):
        load_settings()


def test_sections_and_flat_names_address_the_same_keys():
    settings = load_settings(ranker_k=7, redis_prefix="x:")
    assert settings.ranker.k == 7 and settings.redis.prefix == "x:" and settings.redis.keys.profile("u") == "x:p:{u}"
    changed = settings.replace(topic_events="other", ranker_k=9)
    assert (changed.topic.events, changed.ranker.k, changed.redis.prefix) == ("other", 9, "x:")
    assert settings.ranker.k == 7  # frozen: replace makes a copy
    with pytest.raises(SettingsError, match="FUSIONREC_RANKER_NOPE: no such setting"):
        settings.replace(ranker_nope=1)
    child = settings.to_env()
    assert child["FUSIONREC_RANKER_K"] == "7" and child["FUSIONREC_REDIS_PREFIX"] == "x:"


def test_heartbeat_must_fit_session_timeout(monkeypatch):
    monkeypatch.setenv("FUSIONREC_KAFKA_HEARTBEAT_INTERVAL_MS", "3000")
    with pytest.raises(SettingsError, match="at most a third"):
        load_settings()


def test_redact_url_without_password_is_unchanged():
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_every_setting_is_documented_with_its_variable():
    text = DOC.read_text()
    documented = set(re.findall(r"`(FUSIONREC_[A-Z0-9_]+)`", text))
    expected = {f"FUSIONREC_{name.upper()}" for name, _ in Settings.documented_fields()}
    assert documented == expected
    for name, info in Settings.documented_fields():
        assert info.description, f"{name} has no description"
