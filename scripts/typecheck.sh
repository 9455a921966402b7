#!/usr/bin/env bash
# mypy over the installed layout (embedq = producer/, embedq.worker = worker/), through a tree of
# links: mypy cannot follow the import hook of setuptools' editable install. Errors name
# embedq/... paths: embedq/X is producer/X, embedq/worker/X is worker/X.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/embedq"
for f in "$root"/producer/*.py; do ln -s "$f" "$tree/embedq/"; done
for d in "$root"/producer/*/; do
  d=${d%/}; [ "$(basename "$d")" = __pycache__ ] || ln -s "$d" "$tree/embedq/$(basename "$d")"
done
ln -s "$root/worker" "$tree/embedq/worker"
cd "$tree"
exec "$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache" embedq
