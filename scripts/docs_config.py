"""Writes docs/configuration.md's table from ``service.settings.Settings``, so it cannot drift.

python scripts/docs_config.py            # or --readme FILE, any file with a config block
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined

from benchutil import replace_readme_block
from service.settings import Settings


def shown(default: Any) -> str:
    if default is None:
        return "unset"
    if isinstance(default, Path):
        default = str(default)
    if isinstance(default, str):
        return f"`{default}`"
    return f"{default:g}" if isinstance(default, float) else str(default)


def table() -> str:
    prefix = Settings.model_config.get("env_prefix", "")
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "required" if field.default is PydanticUndefined else shown(field.default)
        rows.append(f"| `{prefix}{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--readme", type=Path, default=Path(__file__).resolve().parents[1] / "docs/configuration.md"
    )
    replace_readme_block(p.parse_args(argv).readme, "config", table())


if __name__ == "__main__":
    main()
