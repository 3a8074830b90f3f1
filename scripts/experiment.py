"""Measure and decide a canary experiment: the command line of ``jobs.experiment``.

python scripts/experiment.py status            per arm: impressions, clicks, CTR; the lift and its test
python scripts/experiment.py status --auto     look again every --interval s; promote or abort
python scripts/experiment.py promote | abort
"""

from __future__ import annotations

import sys

from jobs.experiment import main

if __name__ == "__main__":
    sys.exit(main())
