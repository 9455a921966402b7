#!/usr/bin/env bash
# Installs what embedq needs on a Debian machine: redis-server (Debian's package) and a
# virtual environment in .venv with embedq[worker,torch,openvino,export,dev]. Safe to run again: it only redoes what
# changed. Python 3.10+ and, for redis-server, root (or an existing redis-server) are needed.
set -euo pipefail
cd "$(dirname "$0")/.."

# redis-server for the service and the tests; faketime for the clock-skew tests
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v faketime >/dev/null 2>&1 || missing="$missing faketime"
if [ -n "$missing" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages:$missing; install them first: sudo apt-get install -y$missing" >&2
    exit 1
  fi
  echo "setup: installing$missing from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi

stamp=.venv/.embedq-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing embedq[worker,torch,openvino,export,dev] into .venv (torch is pinned to the CPU build 2.13.0)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[worker,torch,openvino,export,dev]'
  echo "$want" >"$stamp"
fi
echo "setup: ready ($(.venv/bin/python --version), $(redis-server --version | cut -d' ' -f1-3))"
