"""The straightforward build our service is measured against (app.py), and its model files
(export.py)."""

# Run like the service's own SERVE_COMMAND (devtools/liveserver.py).
SERVE_COMMAND = ["python", "-m", "uvicorn", "devtools.baseline.app:app"]
