"""Retrain and redeploy in one command, or roll back.

    python scripts/redeploy.py --models models --instance http://127.0.0.1:8000 --data synthetic --epochs 3
    python scripts/redeploy.py --models models --instance http://127.0.0.1:8000 --rollback
    python -m jobs.redeploy ...   (the same)

Steps: 1 train, 2 export, 3 gate (the bundle loads and validates like the service loads it, export
parity holds, and its test GAUC is within --gauc-margin of the serving version's on the same
test set), 4 publish, 5 flip `current`, 6 reload every instance (POST /admin/reload with the admin
token; without one, the instances' own poll of the pointer), 7 verify that each reports the new
version, or else roll the pointer and the instances back. With ``--canary P`` step 5 starts an
experiment instead (``contracts.canary``): the new version serves P% of the users beside the current
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
from typing import TYPE_CHECKING, Any

from contracts.canary import Mode
from contracts.cli import DataError, Parser
from contracts.repository import ModelRepository, RepositoryError, check_version_name, new_version_name
from contracts.schema import FeatureSchema, SchemaFit
from contracts.settings import tools
from model.config import DINConfig, TrainConfig
from model.config import parse_args as parse_train_args

if TYPE_CHECKING:
    from contracts.bundle import Bundle


class DeployError(Exception):
    """A step failed; what is serving is unchanged or has been rolled back."""


STARTED = time.monotonic()
# The gate scores whole test sets, usually on the machine that serves: one onnxruntime thread (no
# spinning thread pool) at the script's low priority leaves the serving cores to the service.
GATE_THREADS = 1


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


def schema_of(bundle: Path) -> FeatureSchema:
    """A published or exported bundle's features, from its space.json alone (no model load)."""
    from contracts.bundle import SPACE_FILE
    from contracts.schema import FeatureSpace

    try:
        space = json.loads((bundle / SPACE_FILE).read_text())
        return FeatureSpace.from_dict(space).schema
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DeployError(f"{bundle} is not a readable bundle: {e}") from e


def describe_fit(who: str, model: FeatureSchema, data: FeatureSchema, data_name: str) -> str | None:
    """One line on how ``data`` fits ``model``'s features, or None when it fits exactly."""
    fit = SchemaFit.of(model, data)
    if fit.exact:
        return None
    parts = []
    if fit.lacking:
        parts.append(f"it takes {list(fit.lacking)}, which {data_name} lacks: scored as missing")
    if fit.ignored:
        parts.append(f"{data_name} also has {list(fit.ignored)}, which it does not take")
    return f"{who}: " + "; ".join(parts)


def preflight(repo: ModelRepository, a: argparse.Namespace, tc: TrainConfig) -> FeatureSchema:
    """Before minutes of training: the data is readable, and how its features fit the serving
    version's is said (the gate scores what the serving version takes and the data lacks as
    missing, as /score scores a request without it). With --bundle, the bundle's features must all
    be in the data, or the gate would judge it on features it never sees."""
    from model.data import peek_schema

    data = peek_schema(tc.data)
    print(f"      --data {tc.data}: features {_features(data)}")
    if a.bundle is not None:
        version = json.loads((a.bundle / "manifest.json").read_text()).get("version", "")
        if version in repo.versions():
            raise DeployError(
                f"--bundle {a.bundle}: version {version} is already published in {repo.root} (versions are "
                "immutable); --rollback returns to the previous version, or export the run as a new version"
            )
        fit = SchemaFit.of(schema_of(a.bundle), data)
        if fit.lacking:
            raise DeployError(
                f"--bundle {a.bundle} takes {list(fit.lacking)}, which --data {tc.data} lacks: it cannot be "
                "judged on that data; give --data the data it was trained on (or newer data of its layout)"
            )
    serving = repo.current()
    if serving is not None:
        line = describe_fit(f"the serving version {serving}", schema_of(repo.path(serving)), data, "--data")
        print(f"      {line or f'the serving version {serving} takes the same features'}")
    return data


def _features(s: FeatureSchema) -> str:
    groups = {"profile": s.profile, "behaviour": s.behavior, "context": s.context}
    return ", ".join(f"{g} {list(names)}" for g, names in groups.items() if names)


def train_and_export(a: argparse.Namespace, cfg: DINConfig, tc: TrainConfig) -> Path:
    """Steps 1 and 2; with --bundle, the bundle given."""
    if a.bundle is not None:
        step("1-2", f"deploying the exported bundle {a.bundle}; the gate scores {tc.data}'s test set")
        return Path(a.bundle)
    from model.onnx_export import export_bundle
    from model.train import run as train

    work = Path(tc.out).parent
    step(1, f"training {cfg.model} on {tc.data} into {tc.out}")
    result = train(cfg, tc)
    print(f"      test GAUC reported by training: {result['test']['gauc']:.4f}")
    step(2, f"exporting version {work.name}")
    export_bundle(work / "run" / "ckpt.pt", work / "bundle", version=work.name)
    return work / "bundle"


def deploy(repo: ModelRepository, a: argparse.Namespace, cfg: DINConfig, tc: TrainConfig) -> str:
    from contracts.bundle import BundleError, load_bundle, session_options
    from jobs.gate import Margins, evaluate_bundle, judge, live_shift
    from model.data import load_tables

    preflight(repo, a, tc)
    staged = train_and_export(a, cfg, tc)
    gate_session = session_options(GATE_THREADS)
    try:
        candidate = load_bundle(staged, gate_session)
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
    serving_bundle: Bundle | None = None
    if serving_version is not None:
        try:
            serving_bundle = load_bundle(repo.path(serving_version), gate_session)
        except BundleError as e:  # a broken serving version must not block its replacement
            print(f"      the serving version cannot be scored, so nothing to compare against: {e}")
    if serving_bundle is not None:
        serving = evaluate_bundle(serving_bundle, test)
    margins = Margins(a.gauc_margin, a.logloss_margin, a.calibration_margin, a.shift_margin)
    gate = judge(evaluate_bundle(candidate, test), serving, live_shift(candidate, test), margins)
    print(f"      {gate.reason}")
    if not gate.passed:
        anyway = " ".join(
            [f"--bundle {staged}", *(f"{flag} {value:.4f}" for flag, value in gate.needed.items())]
        )
        raise DeployError(
            f"gate refused {version}: {gate.reason}; still serving {serving_version} "
            f"(to deploy it all the same: {anyway})"
        )

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
    env = tools()
    p.add_argument("--models", default=str(env.models), help="model repository (default $DIN_MODELS)")
    p.add_argument(
        "--instance",
        action="append",
        default=env.instance_urls,
        help="base URL of an API instance (repeatable; default $DIN_INSTANCES, comma-separated)",
    )
    p.add_argument(
        "--admin-token",
        default=env.admin_token.get_secret_value() if env.admin_token else None,
        help="default $DIN_ADMIN_TOKEN",
    )
    p.add_argument("--verify-probes", type=int, default=20, help="consecutive /model answers per instance")
    p.add_argument("--verify-timeout", type=float, default=30.0, help="seconds per instance")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, DINConfig, TrainConfig]:
    """Every option checked, the training ones too, before anything is imported or read: a bad
    argument is one line in a fraction of a second."""
    p = Parser(
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
    p.add_argument(
        "--work",
        default="runs/redeploy",
        help="each version's training run and bundle go to WORK/<version>/ (its manifest and /model name "
        "the run as `run`; --init-from serving finds it there)",
    )
    p.add_argument("--gauc-margin", type=float, default=0.002, help="allowed test GAUC drop vs serving")
    p.add_argument("--logloss-margin", type=float, default=0.01, help="allowed test logloss rise vs serving")
    p.add_argument(
        "--calibration-margin",
        type=float,
        default=0.1,
        help="allowed rise of |mean predicted CTR / click rate - 1| vs serving",
    )
    p.add_argument(
        "--shift-margin",
        type=float,
        default=1.0,
        help="allowed PSI of the new version's CTRs on the newest rows between their context and now's",
    )
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
    if a.keep < 1 or a.verify_probes < 1 or min(a.gauc_margin, a.logloss_margin, a.calibration_margin) < 0:
        p.error("--keep and --verify-probes must be >= 1 and --gauc-margin >= 0")
    if a.rollback and train_argv:
        p.error(f"--rollback takes no training options, got {' '.join(train_argv)}")
    a.instance = [u.rstrip("/") for u in a.instance]
    if a.bundle is not None:
        if not (a.bundle / "manifest.json").is_file():
            p.error(f"--bundle {a.bundle}: no manifest.json there (python -m model.export writes bundles)")
        if not any(x == "--data" or x.startswith("--data=") for x in train_argv):
            train_argv = [*train_argv, "--data", _trained_on(p, a.bundle)]
    try:
        version = check_version_name(a.version or new_version_name())
    except RepositoryError as e:
        p.error(f"--version: {e}")
    out = Path(a.work).resolve() / version / "run"
    cfg, tc = parse_train_args([*train_argv, "--out", str(out), "--no-progress"], a.models, p.prog)
    return a, cfg, tc


def _trained_on(p: argparse.ArgumentParser, bundle: Path) -> str:
    """The --data a bundle was trained on, as its manifest records it, if it is still here."""
    try:
        data = json.loads((bundle / "manifest.json").read_text())["training"]["data_arg"]
    except (OSError, ValueError, KeyError, TypeError):
        data = None
    if data is None or (data != "synthetic" and not Path(data).is_dir()):
        p.error(f"--bundle {bundle}: say which data to gate it on with --data (its manifest names none here)")
    print(f"      --bundle without --data: the gate scores the data it was trained on, {data}")
    return str(data)


def main(argv: list[str] | None = None) -> int:
    a, cfg, tc = parse_args(argv)
    if a.nice:
        os.nice(a.nice)  # on a machine it shares with the API, serving keeps the CPU
    repo = ModelRepository(a.models)
    try:
        if a.rollback:
            rollback(repo, a)
            print(f"rolled back to {repo.current()}")
        else:
            deploy(repo, a, cfg, tc)
    except (DeployError, RepositoryError, DataError) as e:
        print(f"redeploy failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
