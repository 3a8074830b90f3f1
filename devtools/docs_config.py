"""Writes docs/configuration.md's two tables from the settings classes, so they cannot drift: the
service's (``service.settings.Settings``, the shared fields included) and what only the commands
read (``contracts.settings.Tools`` beyond ``Shared``).

python scripts/docs_config.py            # or --readme FILE, any file with config and tools blocks
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from contracts.settings import Shared, Tools
from devtools.benchutil import replace_readme_block
from service.settings import Settings


def shown(default: Any) -> str:
    if default is None:
        return "unset"
    if isinstance(default, Path):
        default = str(default)
    if isinstance(default, str):
        return f"`{default}`" if default else "empty"
    return f"{default:g}" if isinstance(default, float) else str(default)


def table(settings: type[BaseSettings] = Settings, leave_out: type[BaseSettings] | None = None) -> str:
    """The fields of ``settings`` (those of ``leave_out`` left out) as a markdown table."""
    prefix = settings.model_config.get("env_prefix", "")
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in settings.model_fields.items():
        if leave_out is not None and name in leave_out.model_fields:
            continue
        default = "required" if field.default is PydanticUndefined else shown(field.default)
        rows.append(f"| `{prefix}{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows)


def tools_table() -> str:
    return table(Tools, leave_out=Shared)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--readme", type=Path, default=Path(__file__).resolve().parents[1] / "docs/configuration.md"
    )
    readme = p.parse_args(argv).readme
    replace_readme_block(readme, "config", table())
    replace_readme_block(readme, "tools", tools_table())
