"""deploy/: every image pinned, every long-running service health-checked, no secret inline."""

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load(name):
    return yaml.safe_load((DEPLOY / name).read_text())


def test_images_are_pinned_and_services_health_checked():
    compose = load("docker-compose.yml")
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image!r}"
        if name != "topics":  # a one-shot; dependants wait for it to exit 0
            assert "test" in service.get("healthcheck", {}), f"{name} has no healthcheck"


def test_no_inline_secrets():
    compose = load("docker-compose.yml")
    anchors = [compose[k] for k in compose if k.startswith("x-")]
    for service in [*compose["services"].values(), *anchors]:
        if not isinstance(service, dict):
            continue
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "AUTH", "SECRET")):
                assert str(value).startswith("${"), f"{key} is set inline"
    assert "REDIS_PASSWORD=" in (DEPLOY / ".env.example").read_text()


def test_prometheus_and_grafana_configs_parse():
    assert load("prometheus/prometheus.yml")["scrape_configs"]
    import json

    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "fusionrec.json").read_text())
    assert len(dashboard["panels"]) >= 10


def exported_metrics() -> set[str]:
    """Every sample name the worker, the online-eval consumer and the serving API export (the processes Prometheus
    scrapes)."""
    from prometheus_client import CollectorRegistry

    from fusionrec.apps.serve.metrics import ApiMetrics
    from fusionrec.consumers.online_eval import OnlineEvaluator
    from fusionrec.consumers.online_eval_service import OnlineEvalCollector
    from fusionrec.streams.metrics import WorkerMetrics

    worker = CollectorRegistry()
    WorkerMetrics(worker)
    online = CollectorRegistry()
    online.register(OnlineEvalCollector(OnlineEvaluator(k=20)))
    api = ApiMetrics().registry
    return {
        family.name + suffix
        for registry in (worker, online, api)
        for family in registry.collect()
        for suffix in ("", "_total", "_bucket", "_count", "_sum")
    }


def test_dashboard_metrics_exist():
    import re

    text = (DEPLOY / "grafana" / "dashboards" / "fusionrec.json").read_text()
    wanted = set(re.findall(r"fusionrec_[a-z_]+", text))
    exported = exported_metrics()
    assert wanted - exported == set(), sorted(wanted - exported)
    # The panels the fusion work added: freshness, lists, refresh time, weights, rewards, exploration, hit rate.
    for name in (
        "fusionrec_recommendations_freshness_seconds_bucket",
        "fusionrec_recommendations_published_total",
        "fusionrec_ranker_refresh_seconds_bucket",
        "fusionrec_fusion_weight",
        "fusionrec_fusion_rewards_total",
        "fusionrec_fusion_lists_total",
        "fusionrec_online_hits_total",
        "fusionrec_online_targets_total",
    ):
        assert name in wanted, name


def test_compose_services_run_real_commands_and_are_scraped():
    import typer.main

    from fusionrec.apps.cli import app

    commands = set(typer.main.get_command(app).commands)
    compose = load("docker-compose.yml")
    fusionrec = {
        name: service
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("${FUSIONREC_IMAGE")
    }
    assert set(fusionrec) == {"topics", "worker", "online-eval", "api"}
    for name, service in fusionrec.items():
        assert service.get("command") and service["command"][0] in commands, f"{name}: {service.get('command')}"
    assert "--metrics-port" in fusionrec["online-eval"]["command"]
    assert fusionrec["api"]["command"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    jobs = {job["job_name"]: job for job in load("prometheus/prometheus.yml")["scrape_configs"]}
    scraped = {name for job in jobs.values() for sd in job.get("dns_sd_configs", []) for name in sd["names"]}
    assert scraped == {"worker", "online-eval", "api"}
    (api_sd,) = jobs["fusionrec-api"]["dns_sd_configs"]
    assert api_sd["names"] == ["api"] and api_sd["port"] == 8080
    override = load("docker-compose.kafka-3.yml")["services"]
    assert set(fusionrec) <= set(override), "the three-broker override must reach every fusionrec service"
