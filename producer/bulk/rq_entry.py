"""The function an RQ worker runs for a bulk job (``embedq bulk submit`` enqueues it by the path
``JOB_FUNCTION``): the job on the workers' Redis, its progress in the RQ job's meta."""

from __future__ import annotations

import os
from typing import Any

import redis

from ..connection import connect
from .job import run_bulk
from .options import BLOCK_S, BulkError, BulkOptions, Progress

JOB_REDIS_ENV = "EMBEDQ_JOB_REDIS_URL"
"""Set by ``embedq bulk worker`` to its own Redis URL: its jobs connect as it did (TLS, Sentinel)."""


def job_redis(connection: redis.Redis, url: str | None = None) -> redis.Redis:
    """A client for the job's requests: on ``url`` if given, else on the RQ worker's own Redis
    (its URL, or its connection's settings), with a socket timeout longer than the job's blocking
    waits (RQ's may have none or less)."""
    url = url or os.environ.get(JOB_REDIS_ENV)
    if url:
        client: redis.Redis = connect(url, socket_timeout=BLOCK_S + 5)
        return client
    pool = connection.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": BLOCK_S + 5, "socket_keepalive": True}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def embed_file(input_path: str, output_dir: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The RQ job: embed ``input_path`` into ``output_dir``; progress goes to the job's meta."""
    from rq import get_current_job

    opts = BulkOptions.from_json(options or {})
    job = get_current_job()
    if job is None:
        raise BulkError("embed_file runs inside an RQ worker; use run_bulk (embedq bulk run) elsewhere")
    client = job_redis(job.connection, opts.redis_url)

    def report(progress: Progress) -> None:
        job.meta["progress"] = progress.to_json()
        job.save_meta()

    return run_bulk(input_path, output_dir, opts, client, on_progress=report)
