"""What the package's commands share: a parser whose errors are one line, and their errors.

A typo in an option is answered at once, as one line that names the option, not with the whole
usage: the commands check their arguments before they import torch or read any data.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


class DataError(ValueError):
    """The data cannot be used as asked; the message says why and what to do instead."""
