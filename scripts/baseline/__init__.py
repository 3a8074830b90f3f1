"""The straightforward build our service is measured against (app.py), and its model files
(export.py)."""

from pathlib import Path

# Run from the repository root, like the service's own SERVE_COMMAND (scripts/liveserver.py).
SERVE_COMMAND = ["python", "-m", "uvicorn", "baseline.app:app", "--app-dir", str(Path(__file__).parents[1])]
