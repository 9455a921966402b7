"""Bulk jobs on RQ: submit one, read its progress, resume one whose RQ worker died.

Jobs are stored with RQ's JSON serializer (no pickle): the job is the function path
``embedq.bulk.job.embed_file`` with plain JSON arguments. Run them with embedq's RQ worker,
which runs that function and nothing else:

    embedq bulk worker --redis-url "$REDIS_URL"
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from .options import RQ_QUEUE, BulkOptions, Progress
from .rq_worker import JOB_FUNCTION

DEFAULT_JOB_TIMEOUT = 7 * 24 * 3600
"""An RQ job is killed after this many seconds (RQ's own default, 180 s, suits no bulk job)."""
STALE_S = 60.0
"""A started job that reported nothing for this long has probably lost its RQ worker (a running
job reports at least every few seconds)."""
RESULT_TTL = 7 * 24 * 3600
"""How long RQ keeps a finished or failed job for ``embedq bulk status``."""


def rq_queue(connection: redis.Redis, name: str = RQ_QUEUE) -> Queue:
    """The RQ queue of bulk jobs, with the JSON serializer."""
    return Queue(name, connection=connection, serializer=JSONSerializer)


def submit(
    connection: redis.Redis,
    input_path: str | Path,
    output_dir: str | Path,
    options: BulkOptions,
    *,
    queue: str = RQ_QUEUE,
    job_timeout: int = DEFAULT_JOB_TIMEOUT,
    retries: int = 0,
) -> Job:
    """Enqueue a bulk job; paths are made absolute (the RQ worker must see the same paths)."""
    source = Path(input_path).resolve()
    if not source.is_file():
        raise FileNotFoundError(f"input {str(source)!r} does not exist or is not a file")
    options.spec.resolve_format(source)  # refuse an unknown format now, not in the worker
    target = Path(output_dir).resolve()
    return rq_queue(connection, queue).enqueue(
        JOB_FUNCTION,
        args=(str(source), str(target), options.to_json()),
        job_timeout=job_timeout,
        result_ttl=RESULT_TTL,
        failure_ttl=RESULT_TTL,
        retry=Retry(max=retries) if retries > 0 else None,
        description=f"embed {source} -> {target}",
        meta={"progress": Progress(phase="queued").to_json()},
    )


def fetch(connection: redis.Redis, job_id: str) -> Job:
    """A bulk job by id; ``LookupError`` naming the id when RQ has none (or forgot it)."""
    from rq.exceptions import NoSuchJobError

    try:
        return Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        raise LookupError(
            f"no RQ job {job_id!r} (finished jobs are kept {RESULT_TTL // 86400} days)"
        ) from None


def describe(connection: redis.Redis, job_id: str) -> dict[str, Any]:
    """What ``embedq bulk status`` shows: RQ status, progress, result or error."""
    job = fetch(connection, job_id)
    status = job.get_status()
    info: dict[str, Any] = {
        "id": job.id,
        "status": str(status.value if hasattr(status, "value") else status),
        "queue": job.origin,
        "description": job.description,
        "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "ended_at": job.ended_at.isoformat() if job.ended_at else None,
        "progress": job.get_meta().get("progress"),
        "resumed_by": job.get_meta().get("resumed_by"),
        "result": None,
        "error": None,
    }
    if info["status"] == "finished":
        info["result"] = job.return_value()
    elif info["status"] == "failed":
        text = job.exc_info or ""
        info["error"] = text.strip().splitlines()[-1] if text.strip() else "failed (no detail recorded)"
    return info


def render(info: dict[str, Any]) -> str:
    """A job's status as a few lines of text."""
    lines = [f"job {info['id']}: {info['status']} ({info['description']})"]
    p = info.get("progress") or {}
    if p:
        total = p.get("total") or 0
        pct = 100.0 * p.get("done", 0) / total if total else 0.0
        eta = p.get("eta_s")
        lines.append(
            f"  {p.get('phase')}: {p.get('done', 0)}/{total} documents ({pct:.1f}%), "
            f"chunks {p.get('chunks_done', 0)}/{p.get('chunks_total', 0)}, {p.get('errors', 0)} bad, "
            f"{p.get('rate', 0.0):.1f} docs/s, ETA {'-' if eta is None else f'{eta:.0f} s'}"
        )
    stale = time.time() - float(p.get("updated", time.time())) if p else 0.0
    if info["status"] == "started" and stale > STALE_S:
        lines.append(
            f"  no progress for {stale:.0f} s: its RQ worker may have died. RQ retries such a job "
            f"itself after a while; to continue now: embedq bulk resume {info['id']}"
        )
    if info.get("result"):
        r = info["result"]
        lines.append(
            f"  done: {r.get('rows')} x {r.get('dim')} vectors of {r.get('model')} in {r.get('output')}"
        )
    if info.get("error"):
        lines.append(f"  error: {info['error']}")
    if info.get("resumed_by"):
        lines.append(f"  resumed by job {info['resumed_by']}: embedq bulk status {info['resumed_by']}")
    elif info.get("error"):
        lines.append(f"  resume it with: embedq bulk resume {info['id']}")
    return "\n".join(lines)


def resume(connection: redis.Redis, job_id: str, *, job_timeout: int = DEFAULT_JOB_TIMEOUT) -> Job:
    """A new job with the same input, output and options as ``job_id`` (failed, or abandoned by
    a killed RQ worker): it continues from the last completed chunk. The output directory's lock
    makes this safe even if the old job is in fact still running: the new one then stops at once."""
    old = fetch(connection, job_id)
    source, target, options = old.args
    job = rq_queue(connection, old.origin).enqueue(
        JOB_FUNCTION,
        args=(source, target, {**options, "overwrite": False}),
        job_timeout=job_timeout,
        result_ttl=RESULT_TTL,
        failure_ttl=RESULT_TTL,
        description=old.description,
        meta={"progress": Progress(phase="queued").to_json(), "resumes": old.id},
    )
    old.meta["resumed_by"] = job.id
    old.save_meta()
    return job
