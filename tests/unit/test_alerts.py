"""deploy/prometheus: the config and alert rules pass `promtool check`, the rules' unit tests pass `promtool test
rules`, and every metric a rule reads is one the code exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.test_deploy import exported_metrics

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian's prometheus package; scripts/setup.sh installs it)"
)

#: Series names Prometheus makes itself or that alerts compute: not for the code to export.
PROMETHEUS_OWN = {"up"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)


def rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for rule in group["rules"]
    ]


def metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects (identifiers that are not functions, keywords or labels)."""
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    without_groupings = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_labels)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?!\s*\()", without_groupings))
    return {n for n in names if n.startswith("fusionrec_") or n in PROMETHEUS_OWN}


@needs_promtool
def test_promtool_checks_config_and_rules():
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml")):
        out = promtool(*args)
        assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_rule_unit_tests_pass():
    out = promtool("test", "rules", "alerts.test.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_rules_the_issue_asks_for_exist_and_each_is_unit_tested():
    names = {rule["alert"] for rule in rules()}
    assert {
        "FusionrecWorkerDown",
        "FusionrecBatchFailures",
        "FusionrecConsumerLagGrowing",
        "FusionrecFreshnessP99OverBudget",
        "FusionrecDeadLetterSpike",
        "FusionrecNoListsPublished",
        "FusionrecRedisStateLost",
    } <= names
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert fired == names, f"rules never seen firing in alerts.test.yml: {sorted(names - fired)}"
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_redis_state_lost_fires_within_a_minute_and_says_to_rebuild():
    (rule,) = [rule for rule in rules() if rule["alert"] == "FusionrecRedisStateLost"]
    assert metric_names(rule["expr"]) == {"fusionrec_redis_state_lost"}
    value, unit = re.fullmatch(r"(\d+)([sm])", rule.get("for", "0s")).groups()
    assert int(value) * (60 if unit == "m" else 1) <= 60, rule["for"]
    assert rule["labels"]["severity"] == "critical"
    assert "fusionrec rebuild --yes" in rule["annotations"]["description"]


def test_every_metric_a_rule_reads_is_exported():
    exported = exported_metrics() | PROMETHEUS_OWN
    used = {name for rule in rules() for name in metric_names(rule["expr"])}
    assert "fusionrec_worker_consumer_lag_records" in used and "fusionrec_worker_ready" in used
    assert used - exported == set(), sorted(used - exported)


def test_metric_names_reads_promql():
    expr = 'max by (partition) (deriv(fusionrec_a_records{job="x"}[10m])) > 0 and sum(rate(fusionrec_b_total[5m]))'
    assert metric_names(expr) == {"fusionrec_a_records", "fusionrec_b_total"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(fusionrec_c_bucket[1m])))") == {
        "fusionrec_c_bucket"
    }
