"""The Grafana dashboard: importable into any Grafana (data source as a variable), every panel's expressions read
metrics the code defines, and the operations panels are there."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.test_alerts import PROMETHEUS_OWN, metric_names
from tests.unit.test_deploy import exported_metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "fusionrec.json"


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel, those inside collapsed rows too; rows themselves left out."""
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels(dashboard) for target in panel["targets"]]


def test_data_source_is_a_variable_not_a_fixed_uid():
    dashboard = load()
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    for panel in panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    # no uid anywhere but the variable and Grafana's built-in annotation source
    uids = set()

    def walk(node):
        if isinstance(node, dict):
            if "uid" in node and "type" in node:
                uids.add(node["uid"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard["panels"])
    walk(dashboard["annotations"])
    assert uids == {"${datasource}", "-- Grafana --"}
    assert dashboard["id"] is None  # import creates it


def test_every_panel_reads_metrics_the_code_defines():
    exported = exported_metrics() | PROMETHEUS_OWN
    for title, expr in expressions(load()):
        names = metric_names(expr)
        assert names, f"{title}: {expr!r} reads no fusionrec metric"
        assert names <= exported, f"{title}: {sorted(names - exported)} not defined by the code"


def test_operations_panels_are_there():
    used = {name for _title, expr in expressions(load()) for name in metric_names(expr)}
    for name in (
        "fusionrec_worker_consumer_lag_records",
        "fusionrec_worker_snapshots_total",
        "fusionrec_worker_snapshot_seconds_bucket",
        "fusionrec_worker_redelivered_total",
        "fusionrec_worker_assigned_partitions",
        "fusionrec_worker_partitions",
        "fusionrec_item_side_paused_partitions",
        "fusionrec_worker_ready",
        "fusionrec_build_info",
    ):
        assert name in used, name


def test_serving_api_panels_are_there():
    by_title = {}
    for title, expr in expressions(load()):
        by_title.setdefault(title, []).append(expr)
    assert "sum by (route) (rate(fusionrec_api_requests_total[1m]))" in by_title["API request rate by route"]
    assert (
        "histogram_quantile(0.99, sum by (le, route) (rate(fusionrec_api_request_seconds_bucket[1m])))"
        in by_title["API latency p99 by route"]
    )
    used = {name for exprs in by_title.values() for expr in exprs for name in metric_names(expr)}
    assert {"fusionrec_api_fallbacks_total", "fusionrec_api_events_total", "fusionrec_redis_state_lost"} <= used


def test_panels_do_not_overlap_and_ids_are_unique():
    dashboard = load()
    every = [*dashboard["panels"], *(p for row in dashboard["panels"] for p in row.get("panels", []))]
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel at {(x, y)}"
                cells.add((x, y))
