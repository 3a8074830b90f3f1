"""Renders deploy/grafana/din.json's panels from a real scrape, without Grafana: docs/dashboard.png.

    python scripts/render_dashboard.py --bundle runs/demo-bundle --out docs/dashboard.png

Starts the service (SERVE_COMMAND, one worker) on a repository holding the bundle and, beside it,
a copy as a canary on half of the users; a Prometheus (Debian's prometheus package) scraping it
every second with the alert rules of deploy/prometheus/rules.yml loaded; and traffic: /score for
random users with top_k 5, and a click on a shown item now and then (sent to /events with the
answer's request_id; the canary's users click a little more, so the two versions' realized CTRs
differ). Then it asks Prometheus for every panel's queries over the run, exactly as the dashboard
holds them, and draws them in the dashboard's layout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from contracts.bundle import MANIFEST_FILE
from contracts.repository import ModelRepository
from devtools.liveserver import ROOT, free_port
from devtools.stack import Stack

DASHBOARD = ROOT / "deploy/grafana/din.json"
RULES = ROOT / "deploy/prometheus/rules.yml"


def traffic(url: str, users: int, stop: threading.Event, p_click: dict[str, float]) -> None:
    host = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=30)
    rng = random.Random(0)
    while not stop.is_set():
        user = rng.randrange(users)
        candidates = [{"item_id": i, "category_id": i % 50} for i in rng.sample(range(1, 2000), 40)]
        body = json.dumps({"user_id": user, "candidates": candidates, "top_k": 5})
        conn.request("POST", "/score", body, {"Content-Type": "application/json"})
        answer = json.loads(conn.getresponse().read())
        events = [{"user_id": user, "item_id": it["item_id"], "category_id": it["category_id"],
                   "request_id": answer["request_id"]}
                  for it in answer["items"] if rng.random() < p_click[answer["model_version"]]]  # fmt: skip
        if events:
            conn.request(
                "POST", "/events", json.dumps({"events": events}), {"Content-Type": "application/json"}
            )
            conn.getresponse().read()
        stop.wait(0.01)
    conn.close()


def query_range(prom: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.loads(r.read())
    if body["status"] != "success":
        raise RuntimeError(f"{expr}: {body}")
    return list(body["data"]["result"])


def legend(template: str, labels: dict[str, str]) -> str:
    out = template or "{{__name__}}"
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def draw(
    panels: list[dict[str, Any]], series: dict[int, list[tuple[str, list[float], list[float]]]], out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) // 8
    fig, axes = plt.subplots(rows, 2, figsize=(14, 2.6 * rows), squeeze=False)
    used = set()
    for p in panels:
        r, c = p["gridPos"]["y"] // 8, p["gridPos"]["x"] // 12
        ax = axes[r][c]
        used.add((r, c))
        for name, xs, ys in series[p["id"]]:
            ax.plot(xs, ys, label=name, linewidth=1.2)
        ax.set_title(p["title"], fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if series[p["id"]]:
            ax.legend(fontsize=6, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    for r in range(rows):
        for c in range(2):
            if (r, c) not in used:
                axes[r][c].axis("off")
    fig.supxlabel("seconds since the start of the run", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def scrape_while_serving(
    url: str, version: str, seconds: float, tmp: Path
) -> tuple[dict[int, list[tuple[str, list[float], list[float]]]], list[dict[str, Any]]]:
    """Traffic on both arms for ``seconds`` while a Prometheus of its own scrapes the service; each
    dashboard panel's series, queried from it."""
    port = free_port()
    target = {"targets": [url.removeprefix("http://")], "labels": {"instance": "api-0"}}
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(RULES)],
              "scrape_configs": [{"job_name": "din", "static_configs": [target]}]}  # fmt: skip
    (tmp / "prometheus.yml").write_text(json.dumps(config))
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    stop = threading.Event()
    p_click = {version: 0.2, f"{version}-canary": 0.25}
    workers = [threading.Thread(target=traffic, args=(url, 500, stop, p_click)) for _ in range(2)]
    try:
        start = time.time()
        for w in workers:
            w.start()
        time.sleep(seconds)
        stop.set()
        for w in workers:
            w.join()
        end = time.time()
        time.sleep(3)  # the last scrapes
        panels = json.loads(DASHBOARD.read_text())["panels"]
        series: dict[int, list[tuple[str, list[float], list[float]]]] = {}
        prom_url = f"http://127.0.0.1:{port}"
        for panel in panels:
            series[panel["id"]] = []
            for target in panel["targets"]:
                for s in query_range(prom_url, target["expr"], start, end, 2):
                    xs = [float(t) - start for t, _ in s["values"]]
                    ys = [float(v) for _, v in s["values"]]
                    series[panel["id"]].append((legend(target.get("legendFormat", ""), s["metric"]), xs, ys))
        return series, panels
    finally:
        stop.set()
        prom.terminate()
        prom.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="an exported bundle (model.export)")
    p.add_argument("--out", type=Path, default=ROOT / "docs/dashboard.png")
    p.add_argument("--seconds", type=float, default=120.0, help="of traffic")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    a = p.parse_args(argv)
    if shutil.which("prometheus") is None:
        p.error("prometheus is not installed (apt-get install prometheus)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repo = ModelRepository(tmp / "models")
        version = repo.publish(a.bundle)
        copy = tmp / "canary-bundle"
        shutil.copytree(a.bundle, copy)
        manifest = json.loads((copy / MANIFEST_FILE).read_text())
        (copy / MANIFEST_FILE).write_text(json.dumps(manifest | {"version": f"{version}-canary"}))
        repo.set_current(version)
        repo.start_canary(repo.publish(copy), 50, salt="dashboard")
        stack = Stack(repo, a.redis_url, "dash:")
        try:
            with stack.serve() as served:
                series, panels = scrape_while_serving(served.url, version, a.seconds, tmp)
            draw(panels, series, a.out)
        finally:
            stack.clear()
    print(f"wrote {a.out}: {sum(1 for s in series.values() if s)} of {len(panels)} panels with data")
    return 0
