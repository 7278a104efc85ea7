"""The embedded stack, started for real: idempotent up, honest status, down stops only what it started."""

from __future__ import annotations

import pytest
import redis

from fusionrec.contracts.settings import load_settings
from fusionrec.infra.stack import Stack, StackError, free_port, process_start_time


def test_session_stack_is_healthy_and_up_is_idempotent(stack):
    before = {s.name: s.pid for s in stack.status()}
    again = stack.up()
    assert [(s.name, s.state) for s in again] == [("broker", "running"), ("redis", "running")]
    assert {s.name: s.pid for s in again} == before
    client = redis.Redis.from_url(stack.settings.redis.url)
    assert client.ping()
    client.close()


def test_a_second_stack_sees_the_first_as_external_and_stops_nothing(stack, tmp_path):
    other = Stack(stack.settings.replace(state_dir=tmp_path))
    services = other.up()
    assert [(s.name, s.state) for s in services] == [("broker", "external"), ("redis", "external")]
    assert other.down() == []
    assert all(s.state == "running" for s in stack.status())


def test_fresh_stack_up_down_leaves_no_process(tmp_path):
    settings = load_settings(
        state_dir=tmp_path,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    stack = Stack(settings)
    pids = [s.pid for s in stack.up()]
    assert all(pids)
    assert sorted(stack.down()) == ["broker", "redis"]
    for pid in pids:
        assert process_start_time(pid) is None
    assert [s.state for s in stack.status()] == ["down", "down"]
    assert stack.down() == []


def test_remote_broker_is_never_started(tmp_path):
    settings = load_settings(state_dir=tmp_path, kafka_bootstrap_servers="kafka.example.invalid:9092")
    with pytest.raises(StackError, match="only listens on loopback"):
        Stack(settings, health_timeout=2).up()


def test_a_port_taken_by_something_else_is_reported(stack, tmp_path):
    redis_port = stack.settings.redis.url.rsplit(":", 1)[1].split("/")[0]
    settings = stack.settings.replace(state_dir=tmp_path, kafka_bootstrap_servers=f"127.0.0.1:{redis_port}")
    with pytest.raises(StackError, match="does not answer as a Kafka broker"):
        Stack(settings, health_timeout=3).up()
