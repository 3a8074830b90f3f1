"""The closed-loop simulator, in its small version: the real service, export and redeploy each day."""

from __future__ import annotations

import json

import pytest

from devtools.simulate import World, history_bound, main

pytestmark = pytest.mark.slow


def test_the_quick_simulation_serves_exports_and_redeploys_every_day(tmp_path):
    out = tmp_path / "simulate.json"
    assert main(["--quick", "--json", str(out), "--png", str(tmp_path / "simulate.png")]) == 0
    days = json.loads(out.read_text())["days"]
    assert [d["day"] for d in days] == [0, 1]
    # Each day serves what the previous day's retrain left: the new version, or the old one when
    # the gate refused the retrain (which a noisy machine's training can make happen).
    serving = "day0"
    for d in days:
        assert d["model_version"] == serving
        if d.get("retrain") == "deployed":
            serving = f"day{d['day'] + 1}"
    assert all(d.get("retrain") in ("deployed", "refused") for d in days[:-1])
    for d in days:
        assert d["impressions"] == 150 * 2 * 5 and 0 <= d["clicks"] <= d["impressions"]
        assert d["ctr"] == d["clicks"] / d["impressions"]
        # The same slates, ranked by the truth, by what the service could know, or at random.
        assert d["oracle_ctr"] >= d["reachable_ctr"] > d["random_ctr"] > 0
        assert 0 <= d["gauc"] <= 1 and d["calibration"] == d["served_ctr"] / d["ctr"]
    assert "yardstick_ctr" not in days[0] and 0 < days[1]["yardstick_ctr"] <= days[1]["oracle_ctr"]
    assert (tmp_path / "simulate.png").stat().st_size > 0


def test_the_history_bound_grows_with_the_history_and_stays_below_the_oracle():
    world = World.make(users=100, items=300, categories=20, drift=0.05, seed=0)
    bound = history_bound(world, [1, 40], k=5, slate=40)
    assert 0 < bound[1] < bound[40] <= 1


def test_a_quick_experiment_aborts_a_broken_canary_and_counts_what_the_simulator_saw(tmp_path):
    """The identical canary's error rate is the benchmark's (20 salts, docs/experiments.md); here
    one broken canary goes through the whole path: redeploy --canary, live traffic, status --auto."""
    out = tmp_path / "experiments.json"
    assert main(["--experiment", "broken", "--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    (broken,) = result["runs"]
    # Shuffled labels rank at random: worse under the ground truth, and the test says so.
    assert broken["kind"] == "broken" and broken["true_lift"] < 0 and broken["decision"] == "abort"
    assert broken["current_after"] == "stable"  # an abort leaves the stable version serving all
    assert broken["looks"] >= 1 and broken["canary_impressions_served"] > 0
    # The experiment's counts, from the service's logs, against the simulator's own: the last look
    # saw at most what the simulator was served, and most of it.
    for arm in ("stable", "canary"):
        seen, served = broken[f"{arm}_impressions_at_decision"], broken["arms"][arm]["impressions"]
        assert 0 < seen <= served and seen >= served / 2, (arm, broken)
    assert result["false_decisions"] == 0  # no identical canary ran


def test_a_saved_result_rewrites_its_worlds_block_and_chart(tmp_path):
    days = [{"day": d, "model_version": f"day{d}", "impressions": 100, "clicks": 20 + d,
             "ctr": 0.2 + d / 100, "served_ctr": 0.25, "calibration": 1.2, "oracle_ctr": 0.4,
             "reachable_ctr": 0.3, "random_ctr": 0.1, "gauc": 0.6, "retrain": "deployed",
             **({"yardstick_ctr": 0.3} if d else {})} for d in range(3)]  # fmt: skip
    saved = tmp_path / "run.json"
    saved.write_text(
        json.dumps({"command": "x", "machine": "m", "settings": {"world": "new-items"}, "days": days})
    )
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- simulate_new-items:start -->\nold\n<!-- simulate_new-items:end -->\nafter\n")
    png = tmp_path / "chart.png"
    assert main(["--table-from", str(saved), "--readme", str(doc), "--png", str(png)]) == 0
    text = doc.read_text()
    assert "\nold\n" not in text and text.count("| day |") == 1 and "| 2 | day2 |" in text
    assert text.startswith("before\n") and text.endswith("after\n")
    assert png.stat().st_size > 0
