#!/usr/bin/env bash
# Serve a DIN on a working default: install, train a small model on SYNTHETIC data if none is
# published yet, load demo behaviours into Redis, and run the API.
#   HOST     interface to bind (default 127.0.0.1; any other needs API keys, DIN_API_KEYS or
#            DIN_API_KEYS_FILE: the service refuses to serve a network without them)
#   PORT     port (default 8000)
#   WORKERS  server processes (default 2)
#   DIN_REDIS_URL (or REDIS_URL)  where the service, and the demo behaviours, live
#            (default redis://127.0.0.1:6379/0: database 0; .../3 for database 3)
#   DEMO_BEHAVIORS=0  do not load the demo behaviours
#   DIN_MODELS, DIN_KEY_PREFIX and every other DIN_* setting (README, Configuration)
set -euo pipefail
cd "$(dirname "$0")/.."
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
WORKERS="${WORKERS:-2}"

# Before minutes of install and training: is the port free?
if ! python3 - "$HOST" "$PORT" <<'PY'
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((sys.argv[1], int(sys.argv[2])))
    except OSError as e:
        sys.exit(f"{sys.argv[1]}:{sys.argv[2]} is not free ({e.strerror}); pick another port with PORT=8001 make quickstart")
PY
then
  exit 1
fi

make install
PY=.venv/bin/python
export DIN_MODELS="${DIN_MODELS:-models}"
export DIN_REDIS_URL="${DIN_REDIS_URL:-${REDIS_URL:-redis://127.0.0.1:6379/0}}"

if [ ! -f "$DIN_MODELS/current" ]; then
  echo "== no model in $DIN_MODELS: training, exporting and publishing a small DIN on SYNTHETIC data"
  # --nice 0: nothing is serving yet, so the retrain need not yield the CPU to the API.
  $PY scripts/redeploy.py --models "$DIN_MODELS" --data synthetic --epochs 5 --nice 0
fi

if ! $PY - <<PY 2>/dev/null
import redis, os
redis.Redis.from_url(os.environ["DIN_REDIS_URL"], socket_timeout=1).ping()
PY
then
  if command -v redis-server >/dev/null; then
    echo "== nothing answers at $DIN_REDIS_URL: starting a local redis-server on 127.0.0.1:6379 for the demo"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    sleep 0.5
    export DIN_REDIS_URL=redis://127.0.0.1:6379/0
  else
    echo "no Redis at $DIN_REDIS_URL and redis-server is not installed; set REDIS_URL" >&2
    exit 1
  fi
fi

if [ "${DEMO_BEHAVIORS:-1}" != 0 ]; then
  echo "== loading SYNTHETIC demo behaviours (4,000 users) into $DIN_REDIS_URL under the key prefix" \
    "${DIN_KEY_PREFIX:-din:}; DIN_REDIS_URL=redis://host:port/N picks another server or database," \
    "DEMO_BEHAVIORS=0 skips this"
  $PY scripts/load_behaviors.py --data synthetic --redis-url "$DIN_REDIS_URL" --no-progress
fi

cat <<MSG
== serving on http://$HOST:$PORT (docs: /docs), $WORKERS workers. Try:
curl -s $HOST:$PORT/score -H 'content-type: application/json' \\
  -d '{"user_id": 1, "candidates": [{"item_id": 5, "category_id": 3}, {"item_id": 77, "category_id": 12}], "explain": true}'
Retrain and roll out while it serves (the workers poll models/current):
  .venv/bin/python scripts/redeploy.py --instance http://$HOST:$PORT --data synthetic --epochs 5
MSG
exec $PY -m service --host "$HOST" --port "$PORT" --workers "$WORKERS"
