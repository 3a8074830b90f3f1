"""The Kubernetes manifests under deploy/k8s/: valid against the Kubernetes schemas, and holding the
same probes, port, commands, settings and metric names as the service, the images and the tests."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from contracts.redis_client import check_url, is_cluster
from service.metrics import Metrics
from service.routes import ops
from service.settings import Settings
from tests.containers.test_container_files import instructions
from tests.deploy.test_observability import exported_names

K8S = Path(__file__).resolve().parents[2] / "deploy/k8s"
KUBERNETES = "1.30"  # the oldest minor version still supported upstream when these were written


def manifests() -> list[Path]:
    return sorted(
        K8S / name for name in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    )


def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, over every manifest the kustomization applies."""
    out = {}
    for path in manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def container(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    (c,) = spec["template"]["spec"]["containers"]
    return dict(c)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises on any unknown or bad field


def test_the_kustomization_applies_every_manifest():
    values = {
        "prometheus-adapter-values.yaml",
        "redis-cluster-values.yaml",
        "kustomization.yaml",
    }  # helm values
    assert {p.name for p in manifests()} == {p.name for p in K8S.glob("*.yaml")} - values


def test_the_api_runs_the_images_command_with_the_services_probes_port_and_settings():
    api = objects()[("Deployment", "din-api")]
    c = container(api)
    assert c["command"] == json.loads(instructions("api", "CMD")[0])
    (port,) = c["ports"]
    assert str(port["containerPort"]) == instructions("api", "EXPOSE")[0]
    routes = {r.path for r in ops.router.routes}  # type: ignore[attr-defined]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and "/readyz" in routes
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and "/healthz" in routes
    settings = {f"DIN_{name.upper()}" for name in Settings.model_fields}
    assert set(env(c)) <= settings, set(env(c)) - settings
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert env(c)["DIN_MODELS"] == mounts["models"]
    user = api["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert f"{user}:{user}" == instructions("api", "USER")[0]
    # The pod is given at least the preStop sleep, the service's drain and uvicorn's graceful stop.
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    graceful = int(c["command"][c["command"].index("--timeout-graceful-shutdown") + 1])
    drain = float(env(c)["DIN_SHUTDOWN_DRAIN_SECONDS"])
    assert api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > sleep + drain + graceful
    labels = api["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = objects()[(kind, "din-api")]["spec"]
        assert (spec["selector"].get("matchLabels") or spec["selector"]) == labels


def test_the_autoscaler_scales_the_api_on_a_metric_the_service_exports():
    hpa = objects()[("HorizontalPodAutoscaler", "din-api")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "din-api"}
    (pods,) = [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"]
    rules = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    assert pods in {r["name"]["as"] for r in rules}  # the adapter serves it
    series = {r["seriesQuery"].split("{")[0] for r in rules}
    assert series <= exported_names(Metrics().scrape().decode()), series


def test_the_trainer_and_the_exporter_run_the_commands_the_images_and_tests_run():
    trainer = container(objects()[("CronJob", "din-retrain")])
    assert trainer["command"] == json.loads(instructions("trainer", "ENTRYPOINT")[0])
    assert env(trainer)["DIN_INSTANCES"] == "http://din-api:8000"
    exporter = container(objects()[("Deployment", "din-exporter")])
    assert exporter["command"][:4] == ["python", "-m", "jobs.feedback", "export"]
    usage = subprocess.run(
        [sys.executable, "-m", "jobs.feedback", "export", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in (a for a in exporter["command"][4:] if a.startswith("--")):
        assert option in usage, option
    # Every Redis URL names the cluster chart's Service (its fullnameOverride), as a cluster.
    redis = yaml.safe_load((K8S / "redis-cluster-values.yaml").read_text())["fullnameOverride"]
    api = container(objects()[("Deployment", "din-api")])
    urls = [env(api)["DIN_REDIS_URL"], env(trainer)["DIN_REDIS_URL"]]
    urls.append(exporter["command"][exporter["command"].index("--redis-url") + 1])
    assert {urllib.parse.urlparse(u).hostname for u in urls} == {redis}
    assert all(is_cluster(u) and check_url(u) for u in urls)


def test_the_api_reads_its_key_entries_from_a_secret_mounted_read_only():
    """The API listens on the pod's network, so it must have keys (python -m service refuses
    otherwise): a file of entries from the Secret din-api-keys, which the service re-reads."""
    api = objects()[("Deployment", "din-api")]["spec"]["template"]["spec"]
    (c,) = api["containers"]
    path = Path(env(c)["DIN_API_KEYS_FILE"])
    mount = next(m for m in c["volumeMounts"] if path.is_relative_to(m["mountPath"]))
    assert mount.get("readOnly") is True
    volume = next(v for v in api["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "din-api-keys"
    assert "DIN_ALLOW_UNAUTHENTICATED" not in env(c)
    assert "din-api-keys --from-file=entries" in (K8S / "kustomization.yaml").read_text()
    assert path.name == "entries"
    assert "api_keys_file" in Settings.model_fields  # the variable the service reads


def test_the_exporter_keeps_a_stated_retention():
    exporter = container(objects()[("Deployment", "din-exporter")])
    days = float(exporter["command"][exporter["command"].index("--keep-days") + 1])
    assert days > 0
