"""Retrain and redeploy in one command, or roll back.

    python scripts/redeploy.py --models models --instance http://127.0.0.1:8000 --data synthetic --epochs 3
    python scripts/redeploy.py --models models --instance http://127.0.0.1:8000 --rollback
    python -m model.deploy ...   (the same)

Steps: 1 train, 2 export, 3 gate (the bundle loads and validates like the service loads it, export
parity holds, and its test GAUC is within --gauc-margin of the serving version's on the same
test set), 4 publish, 5 flip `current`, 6 reload every instance (POST /admin/reload with the admin
token; without one, the instances' own poll of the pointer), 7 verify that each reports the new
version, or else roll the pointer and the instances back. With ``--canary P`` step 5 starts an
experiment instead (``model.canary``): the new version serves P% of the users beside the current
one, and scripts/experiment.py measures and decides. Options other than the ones below
are model.train's (python -m model.train --help). Exit code 0: deployed; 1: refused or rolled back.

This is product code (the trainer image runs it); scripts/redeploy.py is its command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from model.bundle import BundleError, load_bundle, session_options
from model.canary import Mode
from model.data import load_tables
from model.export import export_bundle
from model.gate import evaluate_bundle, gauc_gate
from model.repository import ModelRepository, RepositoryError, check_version_name, new_version_name
from model.train import TrainConfig
from model.train import parse_args as parse_train_args
from model.train import run as train


class DeployError(Exception):
    """A step failed; what is serving is unchanged or has been rolled back."""


STARTED = time.monotonic()
# The gate scores whole test sets, usually on the machine that serves: one onnxruntime thread (no
# spinning thread pool) at the script's low priority leaves the serving cores to the service.
GATE_SESSION = session_options(1)


def step(n: int | str, message: str) -> None:
    print(f"[{n}/7] {message} ({time.monotonic() - STARTED:.1f} s)", flush=True)


def call(url: str, token: str | None, method: str = "GET", timeout: float = 30) -> tuple[int, dict[str, Any]]:
    """One HTTP call on a fresh connection (so each probe may reach a different worker)."""
    headers = (
        {"Authorization": f"Bearer {token}", "Connection": "close"} if token else {"Connection": "close"}
    )
    req = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, json.loads(body) if body.startswith(b"{") else {"error": body.decode(errors="replace")}
    except (urllib.error.URLError, OSError) as e:
        return 0, {"error": str(e)}


def reload_instances(instances: list[str], token: str | None) -> dict[str, str]:
    """Asks every instance to reload now; returns the failures by instance."""
    failures = {}
    for url in instances:
        status, body = call(f"{url}/admin/reload", token, "POST")
        print(f"      {url}: HTTP {status} {body.get('result', '')} serving {body.get('serving', '?')}")
        if status != 200:
            failures[url] = body.get("error") or body.get("detail") or f"HTTP {status}"
    return failures


def verify(
    instances: list[str], version: str, probes: int, timeout: float, canary: str | None = None
) -> dict[str, str]:
    """Each instance must report ``version`` (and ``canary`` as its canary, or none) on ``probes``
    consecutive fresh connections, so every worker behind its address has swapped; returns what
    the laggards last reported."""
    lagging, want = {}, _serving(version, canary)
    for url in instances:
        deadline, streak, seen = time.monotonic() + timeout, 0, "?"
        while streak < probes and time.monotonic() < deadline:
            status, body = call(f"{url}/model", None, timeout=5)
            seen = _serving(body.get("version", "?"), (body.get("canary") or {}).get("version"))
            seen = seen if status == 200 else f"HTTP {status}"
            streak = streak + 1 if seen == want else 0
            if streak < probes and seen != want:
                time.sleep(0.1)
        if streak < probes:
            lagging[url] = seen
        print(f"      {url}: {'serving ' + want if streak >= probes else 'still reports ' + seen}")
    return lagging


def _serving(version: str, canary: str | None) -> str:
    return version if canary is None else f"{version} with canary {canary}"


def roll_out(
    target: str, a: argparse.Namespace, steps: tuple[int | str, int | str], canary: str | None = None
) -> None:
    """Flip-independent half of a deployment: reload every instance and check they serve ``target``
    (and ``canary`` beside it, or no canary)."""
    want = _serving(target, canary)
    if not a.instance:
        step(steps[0], "no --instance given: instances that poll the pointer pick it up themselves")
        return
    if a.admin_token:
        step(steps[0], f"reloading {len(a.instance)} instance(s)")
        failures = reload_instances(a.instance, a.admin_token)
    else:
        step(steps[0], "no admin token: waiting for the instances to poll the pointer")
        failures = {}
    step(steps[1], f"verifying every instance serves {want}")
    lagging = verify(a.instance, target, a.verify_probes, a.verify_timeout, canary)
    if failures or lagging:
        raise DeployError(f"instances did not switch to {want}: {failures | lagging}")


def rollback(repo: ModelRepository, a: argparse.Namespace) -> None:
    before = repo.current()
    pointer = repo.rollback()
    left = ", ".join(pointer.history[1:]) or "none"
    step(
        "rollback", f"current is now {pointer.version} (was {before}); older versions to roll back to: {left}"
    )
    roll_out(pointer.version, a, (6, 7))


def train_and_export(a: argparse.Namespace, train_argv: list[str]) -> tuple[Path, TrainConfig]:
    """Steps 1 and 2; with --bundle, the bundle given (the training options still name the test set)."""
    if a.bundle is not None:
        _, tc = parse_train_args([*train_argv, "--no-progress"])
        step("1-2", f"deploying the exported bundle {a.bundle}; the gate scores {tc.data}'s test set")
        return a.bundle, tc
    version = check_version_name(a.version or new_version_name())
    work = Path(a.work) / version
    cfg, tc = parse_train_args([*train_argv, "--out", str(work / "run"), "--no-progress"])
    step(1, f"training {cfg.model} on {tc.data} into {work / 'run'}")
    result = train(cfg, tc)
    print(f"      test GAUC reported by training: {result['test']['gauc']:.4f}")
    step(2, f"exporting version {version}")
    export_bundle(work / "run" / "ckpt.pt", work / "bundle", version=version)
    return work / "bundle", tc


def deploy(repo: ModelRepository, a: argparse.Namespace, train_argv: list[str]) -> str:
    staged, tc = train_and_export(a, train_argv)
    try:
        candidate = load_bundle(staged, GATE_SESSION)
    except BundleError as e:
        raise DeployError(f"gate: the new bundle does not load: {e}") from e
    version = candidate.version
    parity = candidate.manifest.get("parity_max_abs_error") or {"unmeasured": float("inf")}
    step(3, f"gate for {version}: parity max abs error vs torch {parity}")
    if max(parity.values()) > a.parity_tolerance:
        raise DeployError(f"gate refused {version}: parity error {parity} > {a.parity_tolerance}")
    tables = load_tables(tc.data, tc.max_history, tc.seed)
    test = tables.test
    if tables.valid is not None:  # served logs: rows newer than anything either version trained on
        print(f"      the gate scores both versions on the newest {test.num_rows} samples by time")
    serving_version, serving = repo.current(), None
    if serving_version is not None:
        try:
            serving = evaluate_bundle(load_bundle(repo.path(serving_version), GATE_SESSION), test)
        except BundleError as e:  # a broken serving version must not block its replacement
            print(f"      the serving version cannot be scored, so nothing to compare against: {e}")
    gate = gauc_gate(evaluate_bundle(candidate, test), serving, a.gauc_margin)
    print(f"      {gate.reason}")
    if not gate.passed:
        raise DeployError(f"gate refused {version}: {gate.reason}; still serving {serving_version}")

    step(4, f"publishing {version} into {repo.root}")
    repo.publish(staged)
    if a.canary is not None:
        return start_canary(repo, version, a)
    pointer = repo.set_current(version)
    step(5, f"current -> {version} (was {serving_version})")
    try:
        roll_out(version, a, (6, 7))
    except DeployError as e:
        print(f"      {e}; rolling back", flush=True)
        if pointer.previous is not None:
            rollback(repo, a)
        raise
    removed = repo.prune(a.keep)
    print(f"deployed {version}" + (f"; pruned {removed}" if removed else ""), flush=True)
    return version


def start_canary(repo: ModelRepository, version: str, a: argparse.Namespace) -> str:
    """Step 5 for an experiment: the new version beside the current one, on a share of the users."""
    mode: Mode = "shadow" if a.shadow else "split"
    pointer = repo.start_canary(version, a.canary, a.salt, mode)
    stable = pointer.version
    step(5, f"canary {version} on {a.canary:g}% of users ({mode}) beside {stable}")
    try:
        roll_out(stable, a, (6, 7), canary=version)
    except DeployError as e:
        print(f"      {e}; ending the experiment", flush=True)
        repo.abort()
        raise
    print(f"canary {version} running; decide with: python scripts/experiment.py status [--auto]", flush=True)
    return version


def add_rollout_args(p: argparse.ArgumentParser) -> None:
    """The repository and the instances a pointer flip is rolled out to (redeploy and experiment)."""
    p.add_argument("--models", default=os.environ.get("DIN_MODELS", "models"), help="model repository")
    p.add_argument(
        "--instance",
        action="append",
        default=[u for u in os.environ.get("DIN_INSTANCES", "").split(",") if u],
        help="base URL of an API instance (repeatable; default $DIN_INSTANCES, comma-separated)",
    )
    p.add_argument(
        "--admin-token", default=os.environ.get("DIN_ADMIN_TOKEN"), help="default $DIN_ADMIN_TOKEN"
    )
    p.add_argument("--verify-probes", type=int, default=20, help="consecutive /model answers per instance")
    p.add_argument("--verify-timeout", type=float, default=30.0, help="seconds per instance")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # model.train's --model must not be taken for --models
    )
    add_rollout_args(p)
    p.add_argument("--rollback", action="store_true", help="return to the previous version and stop")
    p.add_argument(
        "--canary", type=float, metavar="P", help="start an experiment: serve the new version to P%% of users"
    )
    p.add_argument("--shadow", action="store_true", help="with --canary: score, log and never serve it")
    p.add_argument("--salt", help="with --canary: draws the split (default: the version's name)")
    p.add_argument("--version", help="name of the new version (default: UTC time)")
    p.add_argument("--bundle", type=Path, help="deploy this exported bundle instead of training one")
    p.add_argument("--work", default="runs/redeploy", help="training runs and staged bundles go here")
    p.add_argument("--gauc-margin", type=float, default=0.002, help="allowed test GAUC drop vs serving")
    p.add_argument("--parity-tolerance", type=float, default=1e-5, help="max ONNX vs torch error")
    p.add_argument("--nice", type=int, default=10, help="lower this process's CPU priority (0 = keep)")
    p.add_argument("--keep", type=int, default=5, help="versions kept in the repository")
    a, train_argv = p.parse_known_args(argv)
    if a.bundle is not None and a.version is not None:
        p.error("--version names a new training; a --bundle keeps the version in its manifest")
    if "--out" in train_argv:
        p.error("--out is set by redeploy (under --work)")
    if a.canary is not None and not 0 < a.canary <= 100:
        p.error("--canary must be a percentage in (0, 100]")
    if (a.shadow or a.salt) and a.canary is None:
        p.error("--shadow and --salt go with --canary P")
    if a.canary is not None and a.rollback:
        p.error("--canary starts an experiment; --rollback ends deployments: one at a time")
    if a.keep < 1 or a.verify_probes < 1 or a.gauc_margin < 0:
        p.error("--keep and --verify-probes must be >= 1 and --gauc-margin >= 0")
    a.instance = [u.rstrip("/") for u in a.instance]
    return a, train_argv


def main(argv: list[str] | None = None) -> int:
    a, train_argv = parse_args(argv)
    if a.nice:
        os.nice(a.nice)  # on a machine it shares with the API, serving keeps the CPU
    repo = ModelRepository(a.models)
    try:
        if a.rollback:
            if train_argv:
                raise DeployError(f"--rollback takes no training options, got {train_argv}")
            rollback(repo, a)
            print(f"rolled back to {repo.current()}")
        else:
            deploy(repo, a, train_argv)
    except (DeployError, RepositoryError) as e:
        print(f"redeploy failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
