"""A real Prometheus (Debian's binary) on loopback scrapes a running worker, the online evaluation and the serving API
(`fusionrec serve`), loads the alert rules, and every series that a dashboard panel or an alert rule reads is there;
every query evaluates. The API's request counters and latency histograms arrive per route with the labels and the
counts of the requests the test made."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from fusionrec.apps.serve.child import ServerChild
from fusionrec.apps.serve.metrics import LATENCY_BUCKETS
from fusionrec.infra.stack import free_port
from tests.integration.workers import MALFORMED, WorkerProcess, handled, make_events, send
from tests.unit.test_alerts import metric_names, rules
from tests.unit.test_dashboard import expressions
from tests.unit.test_dashboard import load as load_dashboard

PROMETHEUS = shutil.which("prometheus")
ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
#: Families whose samples appear only after something this test does not provoke: the worker must expose them.
ONLY_WHEN_IT_HAPPENS = {"fusionrec_worker_evictions_total"}  # every 50,000 offsets of a partition
REC_ROUTE = "/v1/users/{user_id}/recommendations"

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="the prometheus binary is not installed (Debian's prometheus package; scripts/setup.sh installs it)",
)


class Prometheus:
    """A Prometheus server on a free loopback port with its own config and storage; stopped by PID."""

    def __init__(self, tmp: Path, targets: dict[str, int]):
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for job, port in targets.items()
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(tmp / "prometheus.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def wait(self, what, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}")
            try:
                last = what()
            except OSError as exc:  # not listening yet
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(0.5)
        raise TimeoutError(f"prometheus: not there in {timeout:.0f}s (last: {last!r})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def test_prometheus_scrapes_every_series_the_dashboard_and_alerts_use(worker_settings, tmp_path):
    now = int(time.time() * 1000)
    first = make_events(2000, seed=21, start_ms=now - 30_000)
    send(worker_settings, first, raw=MALFORMED, duplicates=first[:20])
    worker = WorkerProcess(worker_settings, tmp_path, "w")
    online_port = free_port()
    online_log = open(tmp_path / "online-eval.log", "ab")  # noqa: SIM115 - closed below
    online = subprocess.Popen(
        [sys.executable, "-m", "fusionrec.apps.cli", "online-eval", "--metrics-port", str(online_port)]
        + ["--grace-ms", "300"],
        env=worker.env,
        stdout=online_log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    server = ServerChild(worker_settings, tmp_path / "serve.log")
    prometheus = Prometheus(
        tmp_path,
        {"fusionrec-worker": worker.metrics_port, "fusionrec-online-eval": online_port, "fusionrec-api": server.port},
    )
    try:
        server.wait_live()
        worker.wait_for(lambda m: handled(m) >= len(first) + 20 + len(MALFORMED), timeout=90)
        worker.wait_for(lambda m: m["fusionrec_recommendations_published_total"] > 0, timeout=60)
        # the same users again: their next events are judged against the lists they were served
        second = make_events(2000, seed=22, start_ms=int(time.time() * 1000))
        send(worker_settings, second)
        worker.wait_for(lambda m: handled(m) >= len(first) + len(second) + 20 + len(MALFORMED), timeout=90)

        prometheus.wait(lambda: _ready(prometheus))
        up = prometheus.wait(lambda: len(prometheus.query("up == 1")) == 3 and prometheus.query("up"))
        assert {s["metric"]["job"] for s in up} == {"fusionrec-worker", "fusionrec-online-eval", "fusionrec-api"}
        prometheus.wait(lambda: prometheus.query("fusionrec_online_targets_total"), timeout=60)

        # The serving API, called as a shop would; Prometheus must hold exactly what the client saw, per route.
        with httpx.Client(base_url=server.url, timeout=20) as http:
            sent = _call_api(http)
            _wait_for_requests(prometheus, sent["requests"])
            # a second round, so that the rates over [1m] see the counters move between two scrapes
            more = _call_api(http, rounds=("reads",))
        for key, value in more["requests"].items():
            sent["requests"][key] += value
        sent["fallbacks"] += more["fallbacks"]
        _wait_for_requests(prometheus, sent["requests"])
        _check_api_series(prometheus, sent)
        time.sleep(5)  # a few more scrapes: rates over [1m] need two samples in the window

        used = {name for _title, expr in expressions(load_dashboard()) for name in metric_names(expr)}
        used |= {name for rule in rules() for name in metric_names(rule["expr"])}
        assert "fusionrec_worker_consumer_lag_records" in used
        # a family without samples yet has no series in Prometheus (nor metadata); the worker must still expose it
        exposed = urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).read().decode()
        missing = []
        for name in sorted(used):
            if prometheus.query(name):
                continue
            if name in ONLY_WHEN_IT_HAPPENS and f"# TYPE {name} " in exposed:
                continue
            missing.append(name)
        assert missing == [], f"series used by the dashboard or the alerts but not scraped: {missing}"

        lag = prometheus.query("fusionrec_worker_consumer_lag_records")
        assert sorted(s["metric"]["partition"] for s in lag) == ["0", "1", "2"]
        assert prometheus.query("fusionrec_worker_ready == 1")
        (info,) = prometheus.query("fusionrec_build_info")
        assert set(info["metric"]) >= {"version", "python", "torch", "device"}

        # every panel's and every rule's query evaluates; the panels' return data (evictions' aside)
        empty = []
        for title, expr in expressions(load_dashboard()):
            if not prometheus.query(expr) and not metric_names(expr) & ONLY_WHEN_IT_HAPPENS:
                empty.append((title, expr))
        assert empty == [], empty
        for rule in rules():
            prometheus.query(rule["expr"])  # raises unless Prometheus accepts it

        # the rules are loaded and evaluate without error against the real series
        def evaluated():
            groups = prometheus.get("/api/v1/rules")["groups"]
            loaded = [r for g in groups for r in g["rules"]]
            return (
                len(loaded) == len(rules())
                and all(r.get("lastEvaluation", "").startswith("20") for r in loaded)
                and loaded
            )

        loaded = prometheus.wait(evaluated, timeout=30)
        assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded]
        firing = [r["name"] for r in loaded if r["state"] == "firing"]
        assert firing == [], firing  # a healthy worker raises nothing (every rule waits minutes before firing anyway)
    finally:
        prometheus.stop()
        server.stop()
        online.send_signal(signal.SIGTERM)
        try:
            online.wait(15)
        except subprocess.TimeoutExpired:
            online.kill()
            online.wait(5)
        online_log.close()
        worker.stop()


def _ready(prometheus: Prometheus) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{prometheus.port}/-/ready", timeout=5) as response:
        return response.status == 200


def _call_api(http: httpx.Client, rounds: tuple[str, ...] = ("reads", "errors", "events")) -> dict:
    """Requests of every kind the dashboard's API panels show; what the client saw: ``requests`` by (route, method,
    status), the ``fallbacks`` answered, the posted ``events`` by outcome."""
    requests: Counter = Counter()
    fallbacks = 0

    def call(route: str, method: str, path: str, **kwargs) -> httpx.Response:
        response = http.request(method, path, **kwargs)
        requests[(route, method, str(response.status_code))] += 1
        return response

    events = Counter()
    if "reads" in rounds:
        for user in [f"user-{n}" for n in range(30)] + ["nobody-has-a-list"]:
            response = call(REC_ROUTE, "GET", f"/v1/users/{user}/recommendations", params={"k": 10})
            assert response.status_code == 200, response.text
            fallbacks += response.json()["fallback"]
        assert fallbacks < 31, "no user had a list of the worker's: the reads all fell back"
        call("/v1/weights", "GET", "/v1/weights")
    if "errors" in rounds:
        assert call(REC_ROUTE, "GET", "/v1/users/user-1/recommendations", params={"k": 0}).status_code == 422
        assert call("unmatched", "GET", "/v2/nothing-here").status_code == 404
    if "events" in rounds:
        now = int(time.time() * 1000)
        valid = {"event_id": "prom-api-1", "user_id": "user-1", "item_id": "item-1", "type": "view", "ts": now}
        assert call("/v1/events", "POST", "/v1/events", json=valid).status_code == 202
        events["delivered"] += 1
        invalid = [{"event_id": "prom-api-2", "user_id": 7, "item_id": "i", "type": "view", "ts": now}, {}]
        assert call("/v1/events", "POST", "/v1/events", json=invalid).status_code == 422
        events["invalid"] += 2
    return {"requests": requests, "fallbacks": fallbacks, "events": events}


def _api_requests(prometheus: Prometheus) -> Counter:
    """fusionrec_api_requests_total as Prometheus last scraped it, by (route, method, status); the probe and the
    scrape routes left out (the test's /livez polls and Prometheus' own scrapes)."""
    out: Counter = Counter()
    for sample in prometheus.query('fusionrec_api_requests_total{job="fusionrec-api"}'):
        labels = sample["metric"]
        if labels["route"] in ("/livez", "/metrics"):
            continue
        out[(labels["route"], labels["method"], labels["status"])] = int(float(sample["value"][1]))
    return out


def _wait_for_requests(prometheus: Prometheus, expected: Counter) -> None:
    with contextlib.suppress(TimeoutError):
        prometheus.wait(lambda: _api_requests(prometheus) == expected, timeout=30)
    assert _api_requests(prometheus) == expected  # after the timeout: shows what differs


def _check_api_series(prometheus: Prometheus, sent: dict) -> None:
    requests = prometheus.query('fusionrec_api_requests_total{job="fusionrec-api"}')
    assert {frozenset(s["metric"]) for s in requests} == {
        frozenset({"__name__", "job", "instance", "route", "method", "status"})
    }
    scrapes = [s for s in requests if s["metric"]["route"] == "/metrics"]
    assert [(s["metric"]["method"], s["metric"]["status"]) for s in scrapes] == [("GET", "200")]

    # the latency histogram: by route only, the code's buckets, as many observations as responses
    per_route = Counter()
    for (route, _method, _status), n in sent["requests"].items():
        per_route[route] += n
    buckets = prometheus.query(f'fusionrec_api_request_seconds_bucket{{job="fusionrec-api", route="{REC_ROUTE}"}}')
    assert {frozenset(s["metric"]) for s in buckets} == {frozenset({"__name__", "job", "instance", "route", "le"})}
    assert sorted(float(s["metric"]["le"]) for s in buckets) == [*LATENCY_BUCKETS, float("inf")]
    top = [s for s in buckets if s["metric"]["le"] == "+Inf"]
    assert [int(float(s["value"][1])) for s in top] == [per_route[REC_ROUTE]]
    counts = {
        s["metric"]["route"]: int(float(s["value"][1]))
        for s in prometheus.query('fusionrec_api_request_seconds_count{job="fusionrec-api"}')
    }
    for route, n in per_route.items():
        assert counts[route] == n, (route, counts[route], n)

    # the dashboard's p99 per route: a latency within the buckets for the reads made in the last minute
    p99 = {
        s["metric"]["route"]: float(s["value"][1])
        for s in prometheus.query(
            "histogram_quantile(0.99, sum by (le, route) (rate(fusionrec_api_request_seconds_bucket[1m])))"
        )
    }
    assert 0 < p99[REC_ROUTE] <= LATENCY_BUCKETS[-1], p99

    (fallbacks,) = prometheus.query('fusionrec_api_fallbacks_total{job="fusionrec-api"}')
    assert int(float(fallbacks["value"][1])) == sent["fallbacks"]
    events = {
        s["metric"]["outcome"]: int(float(s["value"][1]))
        for s in prometheus.query('fusionrec_api_events_total{job="fusionrec-api"}')
    }
    assert events == dict(sent["events"])
