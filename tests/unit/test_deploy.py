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


def test_dashboard_worker_metrics_exist():
    import re

    from prometheus_client import CollectorRegistry

    from streams.metrics import WorkerMetrics

    registry = CollectorRegistry()
    WorkerMetrics(registry)
    exported = {family.name + suffix for family in registry.collect()
                for suffix in ("", "_total", "_bucket", "_count", "_sum")}
    text = (DEPLOY / "grafana" / "dashboards" / "fusionrec.json").read_text()
    wanted = set(re.findall(r"fusionrec_worker_[a-z_]+", text))
    assert wanted and wanted <= exported, sorted(wanted - exported)
