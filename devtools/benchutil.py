"""Helpers shared by the benchmark scripts: what machine ran them, and writing their README tables."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    versions = []
    for module in ("torch", "onnxruntime"):
        with contextlib.suppress(ImportError):
            versions.append(f"{module} {__import__(module).__version__}")
    return f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, " + ", ".join(versions)


def replace_readme_block(readme: Path, name: str, text: str) -> None:
    """Replaces what stands between <!-- name:start --> and <!-- name:end --> in the README."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = readme.read_text()
    if start not in content or end not in content:
        raise ValueError(f"{readme} has no {start} ... {end} block")
    before, rest = content.split(start, 1)
    after = rest.split(end, 1)[1]
    readme.write_text(f"{before}{start}\n{text.strip()}\n{end}{after}")


def delete_prefix(redis_url: str, prefix: str) -> None:
    """Removes every key under ``prefix``: what a script that used its own prefix leaves behind (on a
    cluster, of every master)."""
    from contracts.redis_client import sync_client

    client = sync_client(redis_url)
    stale = list(client.scan_iter(match=f"{prefix}*", count=10_000))
    for k in range(0, len(stale), 10_000):
        client.delete(*stale[k : k + 10_000])
    client.close()
