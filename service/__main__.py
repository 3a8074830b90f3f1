"""Serve the app: ``python -m service [uvicorn options]``, e.g. ``--host 0.0.0.0 --workers 2``.

The one command line the Dockerfile, the quickstart, the benchmarks and the tests run. It is
uvicorn's own command line with the app filled in, plus one thing uvicorn cannot do: with several
worker processes, each one counts only its own requests, so every worker writes its metrics to a
shared directory (prometheus_client's multiprocess mode) and ``/metrics`` adds them up. The
directory must be empty when the workers start, so it is prepared here, once, before any worker
exists: ``PROMETHEUS_MULTIPROC_DIR`` if set (emptied of earlier runs' files), otherwise a fresh
temporary one removed on exit. One worker (the default) keeps its metrics in memory, unless that
variable is set: a file-backed value costs every update a few microseconds more, several times
per request. It also turns onnxruntime's telemetry off, unless told otherwise.

And it refuses to serve a network without API keys: asked to bind anything but loopback
(``--host 0.0.0.0``) with neither ``DIN_API_KEYS`` nor ``DIN_API_KEYS_FILE`` set, it exits with one
line, unless ``DIN_ALLOW_UNAUTHENTICATED=true`` says a gateway in front authenticates.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
import tempfile
from pathlib import Path

import uvicorn

APP = "service.main:create_app"
# prometheus_client's own variable. It picks its mode when first imported, so it must be set
# before anything imports prometheus_client (with one worker, uvicorn runs the app in this process).
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
ORT_TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def prepare_metrics_dir() -> Path | None:
    """Returns the directory to remove on exit (one made here), or None."""
    given = os.environ.get(MULTIPROC_DIR_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return None
    made = Path(tempfile.mkdtemp(prefix="din-metrics-"))
    os.environ[MULTIPROC_DIR_ENV] = str(made)  # inherited by the workers, before they import anything
    return made


def option(argv: list[str], name: str, env: str, default: str) -> str:
    """The value of uvicorn's ``--name`` (last one wins, as in click), else its variable, else the default."""
    value = os.environ.get(env, default)
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def worker_count(argv: list[str]) -> int:
    """uvicorn's --workers (or WEB_CONCURRENCY, which it also reads); 1 when absent or unreadable
    (uvicorn then reports the bad value itself)."""
    value = option(argv, "--workers", "WEB_CONCURRENCY", "1")
    return int(value) if value.isdigit() else 1


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def refusal(argv: list[str]) -> str | None:
    """Why this start is refused, in one line, or None. Reads the settings as the app will (a bad
    variable is named here, before any worker starts) and the key file (it must parse)."""
    from pydantic import ValidationError

    from service.auth import KeyRing
    from service.settings import Settings

    try:
        settings = Settings()
        keys = KeyRing.from_settings(settings)
    except ValidationError as e:
        problems = "; ".join(
            f"DIN_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}" for err in e.errors()
        )
        return f"bad environment: {problems}"
    except (OSError, ValueError) as e:
        return f"DIN_API_KEYS_FILE: {e}"
    if any(a == "--uds" or a.startswith("--uds=") or a == "--fd" or a.startswith("--fd=") for a in argv):
        return None  # a Unix socket or an inherited descriptor: no interface to judge
    host = option(argv, "--host", "UVICORN_HOST", "127.0.0.1")
    if is_loopback(host) or keys.enabled or settings.allow_unauthenticated:
        return None
    return (
        f"refusing to serve on {host} without API keys: anyone who reaches it could write any user's "
        "history. Set DIN_API_KEYS or DIN_API_KEYS_FILE (python -m jobs.api_keys new), or "
        "DIN_ALLOW_UNAUTHENTICATED=true behind a gateway that authenticates"
    )


def main(argv: list[str]) -> None:
    # onnxruntime (1.29 and newer) sends usage telemetry to Microsoft unless told not to, before
    # the first session exists. A scoring service does not call out on its own; set the variable
    # yourself to choose otherwise.
    os.environ.setdefault(ORT_TELEMETRY_ENV, "1")
    made = prepare_metrics_dir() if worker_count(argv) > 1 or MULTIPROC_DIR_ENV in os.environ else None
    # After the metrics directory: the check imports the settings, and they import prometheus_client.
    if reason := refusal(argv):
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        sys.exit(reason)
    try:
        uvicorn.main.main(args=["--factory", APP, *argv], prog_name="python -m service")
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
