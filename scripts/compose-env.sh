#!/usr/bin/env bash
# Prints a .env for docker-compose.yml: a random password per Redis role, one API key, and your
# uid/gid (the bulk service writes ./data as you).  Usage: scripts/compose-env.sh > .env
set -euo pipefail
secret() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }
cat <<ENV
REDIS_WORKER_PASSWORD=$(secret)
REDIS_API_PASSWORD=$(secret)
REDIS_BULK_PASSWORD=$(secret)
REDIS_STATUS_PASSWORD=$(secret)
# callers send Authorization: Bearer <key>; add more as name:key,name2:key2
EMBED_API_KEYS=chatbot:$(secret)
EMBEDQ_UID=$(id -u)
EMBEDQ_GID=$(id -g)
ENV
