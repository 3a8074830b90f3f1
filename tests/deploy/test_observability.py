"""The alert rules and the dashboard under deploy/: valid for Prometheus, each alert firing on
what it is for (promtool's own rule tests), and every metric they use exported by the service."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from contracts.repository import ModelRepository
from service.main import create_app
from service.settings import Settings
from tests.helpers import REDIS_URL, redis_prefix

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES, RULE_TESTS = DEPLOY / "prometheus/rules.yml", DEPLOY / "prometheus/rules.test.yml"
DASHBOARD = DEPLOY / "grafana/din.json"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is absent (apt-get install prometheus; .ci/run installs it)")
    return found


def alert_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def test_the_alert_rules_are_valid_and_fire_on_what_they_are_for():
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        done = subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=RULES.parent)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(dashboard_exprs())]}]}  # fmt: skip
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [promtool(), "check", "rules", str(tmp_path / "dashboard.yml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def exported_names(text: str) -> set[str]:
    """Every series name a scrape can hold, also for metrics that have no sample yet."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def test_every_metric_the_alerts_and_the_dashboard_use_is_exported(trained, tmp_path):
    repo = ModelRepository(tmp_path / "models")
    repo.set_current(repo.publish(trained[1]))
    with (
        redis_prefix() as prefix,
        TestClient(create_app(Settings(models=repo.root, redis_url=REDIS_URL, key_prefix=prefix))) as c,
    ):
        c.post("/score", json={"user_id": 1, "candidates": [{"item_id": 1, "category_id": 1}]})
        exported = exported_names(c.get("/metrics").text)
    used = {m for e in [*alert_exprs(), *dashboard_exprs()] for m in re.findall(r"\bdin_[a-z_]+", e)}
    assert len(used) >= 12
    assert used <= exported, sorted(used - exported)


def test_the_realized_ctr_panel_divides_clicks_by_impressions_per_version_across_instances(tmp_path):
    (expr,) = [e for e in dashboard_exprs() if "din_clicks_total" in e]
    # Two instances; v1 earns 2 + 1 clicks a minute on 20 + 10 impressions, v2 5 on 20.
    series = {("v1", "a"): (2, 20), ("v1", "b"): (1, 10), ("v2", "a"): (5, 20)}
    inputs = []
    for (version, instance), (clicks, shown) in series.items():
        labels = f'{{version="{version}",instance="{instance}"}}'
        inputs.append({"series": f"din_clicks_total{labels}", "values": f"0+{clicks}x40"})
        inputs.append({"series": f"din_impressions_served_total{labels}", "values": f"0+{shown}x40"})
    want = [{"labels": '{version="v1"}', "value": 0.1}, {"labels": '{version="v2"}', "value": 0.25}]
    check = {"expr": expr, "eval_time": "30m", "exp_samples": want}
    test = {"rule_files": [], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": inputs, "promql_expr_test": [check]}]}  # fmt: skip
    (tmp_path / "ctr.test.yml").write_text(yaml.safe_dump(test))
    done = subprocess.run(
        [promtool(), "test", "rules", "ctr.test.yml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
