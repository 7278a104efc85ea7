"""deploy/k8s: the kustomization's resources validate offline against the Kubernetes schemas (kubernetes-validate,
strict: unknown fields rejected), and say what operations needs: probes on /livez and /readyz, resource requests
and limits, config from the ConfigMap, secrets only from Secret objects, commands the CLI has."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
#: The oldest Kubernetes release the manifests are checked against (still in upstream support when written).
KUBERNETES = "1.31.0"
SECRET = "fusionrec-secrets"
#: Variables of the serving API, which is being built separately (issue 13): not fusionrec settings yet.
API_ONLY = {"FUSIONREC_API_KEY_HASHES"}
CLUSTER_SCOPED = {"Namespace"}


def build() -> list[dict]:
    """What ``kubectl kustomize deploy/k8s`` makes of the kustomization: its resources, namespaced, labelled, with
    the images set (the subset of kustomize this kustomization uses)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    images = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in kustomization.get("images", [])}
    out = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
            for label in kustomization.get("labels", []):
                doc["metadata"].setdefault("labels", {}).update(label["pairs"])
            for container in containers(doc):
                container["image"] = images.get(container["image"], container["image"])
            out.append(doc)
    return out


def containers(doc: dict) -> list[dict]:
    return doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def deployments() -> dict[str, dict]:
    return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in build() if d["kind"] == "Deployment"}


def workloads() -> dict[str, dict]:
    """Deployments and Jobs, by component."""
    kinds = ("Deployment", "Job")
    return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in build() if d["kind"] in kinds}


def config() -> dict[str, str]:
    (configmap,) = [d for d in build() if d["kind"] == "ConfigMap"]
    return configmap["data"]


def test_every_resource_validates_against_the_schemas():
    docs = build()
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} >= {
        ("Namespace", "fusionrec"),
        ("ConfigMap", "fusionrec-config"),
        ("Deployment", "fusionrec-worker"),
        ("Deployment", "fusionrec-online-eval"),
        ("Deployment", "fusionrec-api"),
        ("Service", "fusionrec-worker"),
        ("Job", "fusionrec-topics"),
    }
    for doc in [*docs, yaml.safe_load((K8S / "secret.example.yaml").read_text())]:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_validator_rejects_a_misspelt_field():
    worker = copy.deepcopy(deployments()["worker"])
    container = containers(worker)[0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: kustomize's own build not run")
def test_kustomize_builds_the_same_resources():
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = list(yaml.safe_load_all(built))
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, docs)) == sorted(map(key, build()))
    assert {key(d): d for d in docs} == {key(d): d for d in build()}


def test_worker_probes_are_livez_and_readyz_on_the_metrics_port():
    (worker,) = containers(deployments()["worker"])
    port = int(config()["FUSIONREC_METRICS_PORT"])
    assert [p["containerPort"] for p in worker["ports"] if p["name"] == "metrics"] == [port]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert worker["startupProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert config()["FUSIONREC_METRICS_BIND"] == "0.0.0.0"  # the kubelet probes the pod's address


def test_every_container_has_requests_limits_probes_and_a_pinned_image():
    for component, deployment in workloads().items():
        for container in containers(deployment):
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, (component, kind)
            if deployment["kind"] == "Deployment":  # a Job runs to completion: nothing to probe
                assert container.get("livenessProbe") and container.get("readinessProbe"), component
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), (component, image)
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, component
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True, component


def test_config_from_the_configmap_and_secrets_only_from_secret_objects():
    from fusionrec.contracts.settings import Settings

    known = {f"FUSIONREC_{name.upper()}" for name, _info in Settings.documented_fields()}
    assert set(config()) <= known, sorted(set(config()) - known)
    example = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert all(d["kind"] != "Secret" for d in build()), "a Secret with values in the repository"
    for component, deployment in workloads().items():
        for container in containers(deployment):
            assert container["envFrom"] == [{"configMapRef": {"name": "fusionrec-config"}}], component
            for var in container.get("env", []):
                assert "value" not in var, f"{component}: {var['name']} set inline"
                ref = var["valueFrom"]["secretKeyRef"]
                assert ref["name"] == SECRET and ref["key"] in example["stringData"], (component, ref)
                assert var["name"] in known or (component == "api" and var["name"] in API_ONLY), var["name"]


def test_commands_are_the_cli_s():
    import typer.main

    from fusionrec.apps.cli import app

    commands = set(typer.main.get_command(app).commands)
    found = workloads()
    assert set(found) == {"worker", "online-eval", "api", "topics"}
    assert containers(found["worker"])[0]["args"] == ["worker"]
    assert containers(found["topics"])[0]["args"] == ["topics"]
    online = containers(found["online-eval"])[0]["args"]
    assert (
        online[0] == "online-eval" and online[online.index("--metrics-port") + 1] == config()["FUSIONREC_METRICS_PORT"]
    )
    for component in ("worker", "online-eval", "topics"):
        assert containers(found[component])[0]["args"][0] in commands
    api = found["api"]
    assert containers(api)[0]["args"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert "serve" in commands and api["spec"]["replicas"] >= 1


def test_the_in_cluster_prometheus_config_finds_the_services():
    services = {
        f"{d['metadata']['name']}.{d['metadata']['namespace']}.svc.cluster.local": d
        for d in build()
        if d["kind"] == "Service"
    }
    config_path = K8S.parent / "prometheus" / "prometheus.k8s.yml"
    jobs = {job["job_name"]: job for job in yaml.safe_load(config_path.read_text())["scrape_configs"]}
    for job, service in (
        ("fusionrec-worker", "fusionrec-worker"),
        ("fusionrec-online-eval", "fusionrec-online-eval"),
        ("fusionrec-api", "fusionrec-api-pods"),
    ):
        (sd,) = jobs[job]["dns_sd_configs"]
        (name,) = sd["names"]
        assert name in services and name.startswith(f"{service}."), name
        assert sd["port"] == services[name]["spec"]["ports"][0]["port"]
    # one A record per worker pod: the worker's Service is headless
    assert services["fusionrec-worker.fusionrec.svc.cluster.local"]["spec"]["clusterIP"] == "None"
    # and one per API pod: a scrape through the load-balanced fusionrec-api would read a different pod each time
    api_pods = services["fusionrec-api-pods.fusionrec.svc.cluster.local"]["spec"]
    assert api_pods["clusterIP"] == "None"
    assert api_pods["selector"] == services["fusionrec-api.fusionrec.svc.cluster.local"]["spec"]["selector"]
