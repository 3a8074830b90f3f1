"""The README's journeys, walked in order as a new user walks them, with the commands taken from
README.md itself: the quickstart, its /score examples, retrain and redeploy on other data, rollback,
traffic with request ids and clicks, the export, a retrain from the logs that fine-tunes the
serving run, a canary, its status and its end.

Each command is found in the README by what it does; a README that no longer shows one fails here,
and so does a command that prints a traceback or exits with an error. Only what a test must change
is changed: the port, the Redis database and key prefix, the model repository and output folders
(in a temporary folder), and the size of the real data (the first users of amazon-sports, one
epoch), so the walk takes minutes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from devtools.liveserver import free_port, wait_ready
from devtools.stack import ANY_VERDICT
from tests.conftest import SHARED_DATA
from tests.helpers import REDIS_URL, redis_prefix

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_URL = "http://127.0.0.1:8000"


def readme_commands() -> list[str]:
    """Every command line of the README's bash blocks (continuations joined, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [re.sub(r"\s+#.*$", "", line).strip() for line in lines if line.strip()]


def readme_command(*words: str) -> list[str]:
    """The first README command holding every one of ``words``, as argv."""
    for line in readme_commands():
        argv = shlex.split(line)
        if all(w in argv for w in words):
            return argv
    raise AssertionError(f"README.md no longer shows a command with {' '.join(words)}")


def readme_json(after: str) -> dict[str, Any]:
    """The JSON block that follows the README line starting with ``after``."""
    text = README.read_text()
    start = text.index(after)
    return json.loads(re.search(r"```json\n(.*?)```", text[start:], re.S).group(1))  # type: ignore[union-attr]


def curl_body(argv: list[str]) -> dict[str, Any]:
    return json.loads(argv[argv.index("-d") + 1])


def call(url: str, body: dict[str, Any] | None = None, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class Walk:
    """The user's shell: the environment every command shares, and the substitutions a test needs."""

    def __init__(self, root: Path, prefix: str, data: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = os.environ | {
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "DIN_MODELS": str(root / "models"),
            "DIN_REDIS_URL": REDIS_URL,
            "DIN_KEY_PREFIX": prefix,
            "DIN_MODEL_POLL_SECONDS": "0.5",
        }
        self.swap = {
            README_URL: self.url,
            "../shared/data/amazon-sports": str(data),
            "runs/logs": str(root / "logs"),
            ".venv/bin/python": sys.executable,
        }
        self.log = root / "walk.log"

    def argv(self, argv: list[str], *extra: str) -> list[str]:
        out = []
        for a in argv:
            for old, new in self.swap.items():
                a = a.replace(old, new)
            out.append(str(ROOT / a) if a.startswith("scripts/") else a)
        if "--epochs" in out:  # one epoch of a slice of the data: the journey, not the model, is tested
            out[out.index("--epochs") + 1] = "1"
        return [*out, *extra]

    def run(self, argv: list[str], *extra: str, expect: int = 0, timeout: float = 600) -> str:
        cmd = self.argv(argv, *extra)
        done = subprocess.run(
            cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        output = done.stdout + done.stderr
        with self.log.open("a") as f:
            f.write(f"$ {shlex.join(cmd)}\n{output}\n")
        assert "Traceback" not in output, f"{shlex.join(cmd)} printed a traceback:\n{output}"
        assert done.returncode == expect, f"{shlex.join(cmd)} exited {done.returncode}:\n{output}"
        return output

    def serving(self) -> dict[str, Any]:
        return call(f"{self.url}/model")[1]


@pytest.fixture
def amazon_slice(tmp_path) -> Path:
    """amazon-sports' first 2,000 test users, train and test: its layout and features, a fraction
    of its size."""
    source = SHARED_DATA / "amazon-sports"
    if not source.is_dir():
        pytest.skip(f"real data folder {source} is absent")
    users = pa.array(np.unique(pq.read_table(source / "test.parquet", columns=["user_id"])["user_id"])[:2000])
    out = tmp_path / "amazon-sports"
    out.mkdir()
    for split in ("train", "test"):
        table = pq.read_table(source / f"{split}.parquet")
        pq.write_table(table.filter(pc.is_in(table["user_id"], users)), out / f"{split}.parquet")
    return out


@pytest.fixture
def quickstart(tmp_path, amazon_slice) -> Iterator[Walk]:
    """`make quickstart`, as the README says, serving in the background until the test ends."""
    with redis_prefix() as prefix:
        walk = Walk(tmp_path, prefix, amazon_slice)
        assert readme_command("make", "quickstart") == ["make", "quickstart"]
        out = (tmp_path / "quickstart.log").open("w")
        server = subprocess.Popen(
            ["make", "-C", str(ROOT), "quickstart"], env=walk.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_ready(walk.url, timeout=900, server=server)
            yield walk
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)
            out.close()
        text = (tmp_path / "quickstart.log").read_text()
        assert "Traceback" not in text, text
        assert f"into {REDIS_URL} under the key prefix {prefix!r}" in text  # it said where it wrote


def traffic(walk: Walk, users: range, seed: int) -> int:
    """Requests shaped like the README's /score example, each with its request id, and clicks on
    a share of the items shown, sent as the README's /events example; returns the answers."""
    rng = random.Random(seed)
    example, event = readme_json("**`POST /score`**"), {"user_id": 1, "item_id": 5, "category_id": 3}
    answers = 0
    for user in users:
        candidates = [{"item_id": rng.randrange(2000), "category_id": rng.randrange(50)} for _ in range(10)]
        body = example | {"user_id": user, "candidates": candidates, "request_id": f"walk-{seed}-{user}"}
        body["explain"] = False
        status, answer = call(f"{walk.url}/score", body)
        assert status == 200, answer
        answers += 1
        for item in answer["items"]:
            if rng.random() < 0.15 + 0.3 * (item["rank"] <= 2):
                click = event | {k: item[k] for k in ("item_id", "category_id")}
                click |= {"user_id": user, "request_id": answer["request_id"]}
                status, _ = call(f"{walk.url}/events", {"events": [click]})
                assert status == 200
    return answers


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.timeout(1800)
def test_the_readme_walked_from_the_quickstart_to_the_end_of_a_canary(quickstart):
    walk = quickstart
    first = walk.serving()["version"]

    # The quickstart's own example, then the API section's.
    status, answer = call(f"{walk.url}/score", curl_body(readme_command("curl")))
    assert status == 200 and len(answer["items"]) == 2, answer
    assert all(len(i["attention"]) == answer["history_length"] for i in answer["items"])
    example = readme_json("**`POST /score`**")
    status, answer = call(f"{walk.url}/score", example)
    assert status == 200 and "ignored" not in answer, answer

    # Retrain and redeploy on real data of other features, then the README's example again.
    out = walk.run(readme_command("scripts/redeploy.py", "--data", "--epochs"))
    assert "takes ['age', 'gender', 'hour', 'weekday'], which --data lacks: scored as missing" in out
    second = walk.serving()["version"]
    assert second != first
    status, answer = call(f"{walk.url}/score", example)
    assert status == 200, answer  # yesterday's request still works; what this model left out is said
    assert answer["ignored"] == ["context.hour", "context.weekday", "user.age", "user.gender"]
    served_by_second = traffic(walk, range(1000, 1030), seed=1)

    # Roll back, and serve traffic with request ids and clicks, one with a string user id.
    walk.run(readme_command("scripts/redeploy.py", "--rollback"))
    assert walk.serving()["version"] == first
    served_by_first = traffic(walk, range(300), seed=2)
    assert call(f"{walk.url}/score", example | {"user_id": "1"})[0] == 200

    # The export, as a user trying it at once: the label window explained, nothing lost.
    time.sleep(1.5)  # the impression log is flushed in the background
    out = walk.run(readme_command("jobs.feedback", "export", "--label-window-seconds"))
    assert f"of {served_by_first + served_by_second + 4} answers" in out, out  # and the 4 examples
    logs = [pq.read_table(f) for f in sorted((walk.root / "logs").glob("*/*.parquet"))]
    assert sum(t.num_rows for t in logs) > 0
    versions = {v for t in logs for v in t["model_version"].to_pylist()}
    assert versions == {first, second}
    for t in logs:  # the union of both versions' columns in every file
        assert {"age", "gender", "hour", "weekday", "item_id", "hist_item_id", "label"} <= set(t.column_names)

    # Retrain from the logs, fine-tuning the serving run. The gate's verdict on a few thousand
    # random clicks is noise, so it is told to pass: the journey is what is tested here.
    out = walk.run(readme_command("scripts/redeploy.py", "--init-from"), *ANY_VERDICT)
    assert "warm start from" in out
    third = walk.serving()["version"]
    assert third not in (first, second)
    assert walk.serving()["manifest"]["run"] == str(
        (walk.root / "runs" / "redeploy" / third / "run").resolve()
    )

    # A canary on the logs, its status, and its end.
    walk.run(readme_command("scripts/redeploy.py", "--canary"), *ANY_VERDICT)
    canary = walk.serving()["canary"]["version"]
    traffic(walk, range(2000, 2040), seed=3)
    out = walk.run(readme_command("scripts/experiment.py", "status"))
    assert canary in out and third in out
    walk.run(readme_command("scripts/experiment.py", "abort"))
    assert walk.serving()["version"] == third and walk.serving()["canary"] is None
    assert "no experiment is running" in walk.run(readme_command("scripts/experiment.py", "status"))


@pytest.mark.slow
def test_the_readme_api_keys_journey_serves_a_network_only_with_keys_and_forgets_a_user(models, tmp_path):
    """The API keys section, walked: keys made into a file, the service on 0.0.0.0 with it, the
    curl example with and without the key, then a user forgotten by the route and the command."""
    with redis_prefix() as prefix:
        env = os.environ | {"DIN_MODELS": str(models), "DIN_REDIS_URL": REDIS_URL, "DIN_KEY_PREFIX": prefix}
        env.pop("DIN_API_KEYS", None)
        keys = {}
        for name in ("web", "ops"):
            argv = readme_command("jobs.api_keys", "new", name)
            done = subprocess.run(argv, cwd=tmp_path, env=env | {"PYTHONPATH": str(ROOT)},
                                  capture_output=True, text=True, check=True)  # fmt: skip
            keys[name] = done.stdout.strip()
        serve = readme_command("-m", "service", "--host", "0.0.0.0")
        assignments = [a for a in serve if re.fullmatch(r"DIN_\w+=.*", a)]
        argv = [a for a in serve if a not in assignments]
        port = free_port()
        argv = [sys.executable if a == ".venv/bin/python" else str(port) if a == "8000" else a for a in argv]
        env |= dict(a.split("=", 1) for a in assignments)
        # Without the keys, the same command refuses to start, in one line.
        without = {k: v for k, v in env.items() if k != "DIN_API_KEYS_FILE"}
        refused = subprocess.run(argv, cwd=tmp_path, env=without, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        server = subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, server=server)
            curl = readme_command("curl", "Authorization: Bearer $KEY")
            body = curl_body(curl)

            def post(path: str, payload: dict[str, Any], key: str | None) -> int:
                headers = {"content-type": "application/json"} | (
                    {"Authorization": f"Bearer {key}"} if key else {}
                )
                req = urllib.request.Request(url + path, json.dumps(payload).encode(), headers)
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        return int(r.status)
                except urllib.error.HTTPError as e:
                    return int(e.code)

            assert post("/score", body, keys["web"]) == 200
            assert post("/score", body, None) == 401
            assert post("/score", body, keys["ops"]) == 403
            assert (
                post("/events", {"events": [{"user_id": 42, "item_id": 1, "category_id": 1}]}, keys["web"])
                == 200
            )
            assert post("/admin/erase", {"users": [42, "anna"]}, keys["web"]) == 403
            assert post("/admin/erase", {"users": [42, "anna"]}, keys["ops"]) == 200
        finally:
            server.terminate()
            server.wait(60)
        erase = readme_command("jobs.erase", "--user")
        logs = tmp_path / "logs"
        logs.mkdir()
        argv = [
            sys.executable if a == ".venv/bin/python" else a.replace("runs/logs", str(logs)) for a in erase
        ]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["users"] == 2
