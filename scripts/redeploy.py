"""Retrain and redeploy in one command, or roll back: the command line of ``jobs.redeploy``.

python scripts/redeploy.py --models models --instance http://127.0.0.1:8000 --data synthetic --epochs 3
python scripts/redeploy.py --models models --instance http://127.0.0.1:8000 --rollback
"""

from __future__ import annotations

import sys

from jobs.redeploy import main

if __name__ == "__main__":
    sys.exit(main())
