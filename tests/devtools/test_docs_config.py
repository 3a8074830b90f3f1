"""docs/configuration.md's table is the one scripts/docs_config.py writes from Settings."""

from __future__ import annotations

import re
from pathlib import Path

from devtools.docs_config import table, tools_table

ROOT = Path(__file__).resolve().parents[2]


def test_the_configuration_tables_are_generated_from_the_settings_classes():
    readme = (ROOT / "docs/configuration.md").read_text()
    for name, written in (("config", table()), ("tools", tools_table())):
        block = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", readme, re.S)
        assert block is not None and block.group(1) == written, "run: python scripts/docs_config.py"


def test_every_setting_is_documented():
    for written in (table(), tools_table()):
        assert "|  |" not in written and " | None |" not in written
    assert "DIN_INSTANCES" in tools_table() and "DIN_REDIS_URL" not in tools_table()
