"""docs/configuration.md's table is the one scripts/docs_config.py writes from Settings."""

from __future__ import annotations

import re
from pathlib import Path

from docs_config import table

ROOT = Path(__file__).resolve().parents[2]


def test_the_configuration_table_is_generated_from_the_settings_class():
    readme = (ROOT / "docs/configuration.md").read_text()
    block = re.search(r"<!-- config:start -->\n(.*?)\n<!-- config:end -->", readme, re.S)
    assert block is not None and block.group(1) == table(), "run: python scripts/docs_config.py"


def test_every_setting_is_documented():
    assert "|  |" not in table() and " | None |" not in table()
