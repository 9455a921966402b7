"""``embedq bulk``: submit a bulk job to RQ, follow it, resume it, or run one in the foreground."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import redis

from ..connection import connect
from ..defaults import setting
from ..extras import MissingExtra, require
from ..topology import is_cluster
from .job import run_bulk
from .options import RQ_QUEUE, BulkError, BulkOptions, Progress
from .output import OutputError
from .reader import BulkInputError
from .rq_entry import JOB_REDIS_ENV

RQ_ON_CLUSTER = (
    "RQ does not run on Redis Cluster (its keys span hash slots): give RQ a small standalone Redis "
    "(--redis-url) and the RQ worker the workers' cluster (embedq bulk worker --workers-redis-url "
    "redis+cluster://...); `embedq bulk run` (no RQ) runs on the cluster directly"
)

DEFAULTS = BulkOptions()


def _redis_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-url",
        default=setting("redis_url"),
        help="Redis of RQ and the workers (env REDIS_URL)",
    )


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="JSONL or CSV/TSV file of documents (optionally .gz)")
    p.add_argument("output", help="output directory (created; resumed if it holds this job's state)")
    p.add_argument("--format", choices=("jsonl", "csv", "tsv"), help="input format (default: from the name)")
    p.add_argument("--id-field", default=DEFAULTS.id_field, help="field or column of the id (default id)")
    p.add_argument(
        "--text-field", default=DEFAULTS.text_field, help="field or column of the text (default text)"
    )
    p.add_argument("--kind", choices=("passage", "query"), default=DEFAULTS.kind, help="default passage")
    p.add_argument(
        "--batch-size", type=int, default=DEFAULTS.batch_size, help="texts per request (default 8)"
    )
    p.add_argument(
        "--max-batch-chars",
        type=int,
        default=DEFAULTS.max_batch_chars,
        help="characters per request (default 2048)",
    )
    p.add_argument(
        "--chunk-size", type=int, default=DEFAULTS.chunk_size, help="documents per chunk (default 1024)"
    )
    p.add_argument(
        "--inflight", type=int, default=DEFAULTS.inflight, help="requests queued at once (default 16)"
    )
    p.add_argument(
        "--max-chars",
        type=int,
        default=setting("max_text_chars"),
        help="longest text (default EMBED_MAX_TEXT_CHARS or 8192)",
    )
    p.add_argument(
        "--request-timeout", type=float, default=DEFAULTS.request_timeout, help="seconds (default 3600)"
    )
    p.add_argument("--queue", default=setting("queue"), help="the workers' queue (env EMBED_QUEUE)")
    p.add_argument(
        "--model",
        help="the model the output must come from (its served name): workers of another refuse "
        "(default: the first to answer, then exactly that one for the whole output)",
    )
    p.add_argument(
        "--no-truncate",
        dest="truncate",
        action="store_false",
        help="stop at a document longer than the model's token window instead of cutting it "
        "(cut ones are listed in truncated.jsonl)",
    )
    p.add_argument("--fail-fast", action="store_true", help="stop at the first bad document")
    p.add_argument(
        "--keep-duplicate-ids", action="store_true",
        help="embed a document whose id an earlier one has (default: list it in errors.jsonl as "
        "duplicate_id; the first one wins)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace another job's output in OUTPUT")


def options_from(ns: argparse.Namespace) -> BulkOptions:
    """The job options given on the command line."""
    return BulkOptions(
        format=ns.format,
        id_field=ns.id_field,
        text_field=ns.text_field,
        kind=ns.kind,
        batch_size=ns.batch_size,
        max_batch_chars=ns.max_batch_chars,
        chunk_size=ns.chunk_size,
        inflight=ns.inflight,
        max_chars=ns.max_chars,
        request_timeout=ns.request_timeout,
        queue=ns.queue,
        model=ns.model,
        truncate=ns.truncate,
        fail_fast=ns.fail_fast,
        keep_duplicate_ids=ns.keep_duplicate_ids,
        overwrite=ns.overwrite,
    )


def add_parser(sub: Any) -> None:
    """Add ``bulk`` and its subcommands to an ``embedq`` subparsers object."""
    bulk = sub.add_parser("bulk", help="embed a whole document set (RQ job or foreground)")
    cmds = bulk.add_subparsers(dest="bulk_command", required=True)

    submit = cmds.add_parser("submit", help="enqueue a bulk job for `embedq bulk worker`")
    _job_args(submit)
    _redis_args(submit)
    submit.add_argument("--rq-queue", default=RQ_QUEUE, help=f"RQ queue (default {RQ_QUEUE})")
    submit.add_argument("--job-timeout", type=int, default=7 * 24 * 3600, help="seconds (default 7 days)")
    submit.add_argument("--retries", type=int, default=3, help="RQ retries if the job fails (default 3)")

    status = cmds.add_parser("status", help="a bulk job's progress: done/total, rate, ETA")
    status.add_argument("job_id")
    _redis_args(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    resume = cmds.add_parser("resume", help="continue a failed or abandoned job from its last chunk")
    resume.add_argument("job_id")
    _redis_args(resume)

    worker = cmds.add_parser(
        "worker", help="run the RQ worker for bulk jobs (runs embedq's job function and nothing else)"
    )
    _redis_args(worker)
    worker.add_argument("--rq-queue", action="append", help=f"RQ queue(s) to serve (default {RQ_QUEUE})")
    worker.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    worker.add_argument("--name", help="the RQ worker's name (default: RQ's)")
    worker.add_argument("--worker-ttl", type=int, help="seconds before RQ deems a silent worker dead")
    worker.add_argument(
        "--workers-redis-url",
        help="Redis of the embedq workers when it is not RQ's: a Redis Cluster (redis+cluster://), on "
        "which RQ cannot run, with RQ on a small standalone Redis (--redis-url)",
    )

    run = cmds.add_parser("run", help="run a bulk job here, in the foreground, with a progress bar")
    _job_args(run)
    _redis_args(run)
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def run_command(ns: argparse.Namespace) -> int:
    """Carry out ``embedq bulk <command>``; exit status 0, or 1 with a message on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if ns.bulk_command == "run":
            require("bulk", "tqdm", what="embedq bulk run")
        else:
            require("bulk", "rq", what=f"embedq bulk {ns.bulk_command}")
    except MissingExtra as exc:
        print(f"embedq: {exc}", file=sys.stderr)
        return 2
    if ns.bulk_command != "run" and is_cluster(ns.redis_url):
        print(f"embedq bulk: {RQ_ON_CLUSTER}", file=sys.stderr)
        return 2
    client = connect(ns.redis_url, socket_timeout=None)  # RQ's blocking waits set their own bounds
    try:
        if ns.bulk_command == "run":
            return _run(ns, client)
        if ns.bulk_command == "worker":
            from .rq_worker import bulk_worker

            # the jobs (forked) send their requests there, connecting as this worker does (any topology)
            os.environ[JOB_REDIS_ENV] = ns.workers_redis_url or ns.redis_url
            worker = bulk_worker(client, ns.rq_queue or [RQ_QUEUE], name=ns.name, worker_ttl=ns.worker_ttl)
            worker.work(burst=ns.burst)
            return 0
        from . import rq_jobs

        if ns.bulk_command == "submit":
            job = rq_jobs.submit(
                client,
                ns.input,
                ns.output,
                options_from(ns),
                queue=ns.rq_queue,
                job_timeout=ns.job_timeout,
                retries=ns.retries,
            )
            print(job.id)
            print(
                f"queued on RQ queue {ns.rq_queue!r}; follow it with: embedq bulk status {job.id}",
                file=sys.stderr,
            )
            _note_no_rq_worker(client)
        elif ns.bulk_command == "status":
            info = rq_jobs.describe(client, ns.job_id)
            print(json.dumps(info, indent=2, default=str) if ns.json else rq_jobs.render(info))
        elif ns.bulk_command == "resume":
            job = rq_jobs.resume(client, ns.job_id)
            print(job.id)
            print(
                f"a new job {job.id} resumes {ns.job_id} from its last finished chunk (the old id stays "
                f"failed); follow the new one: embedq bulk status {job.id}",
                file=sys.stderr,
            )
            _note_no_rq_worker(client)
        return 0
    except (BulkError, BulkInputError, OutputError, LookupError, FileNotFoundError, ValueError) as exc:
        print(f"embedq bulk: {exc}", file=sys.stderr)
        return 1
    except redis.exceptions.ConnectionError as exc:
        print(f"embedq bulk: cannot reach Redis at {ns.redis_url}: {exc}", file=sys.stderr)
        return 1


def _note_no_rq_worker(client: redis.Redis) -> None:
    """Say so when no RQ worker would pick a queued job up."""
    from rq import Worker

    if not Worker.all(connection=client):
        print("note: no RQ worker is running: start one with `embedq bulk worker`", file=sys.stderr)


def _run(ns: argparse.Namespace, client: redis.Redis) -> int:
    from tqdm import tqdm

    from .rq_entry import job_redis

    bar = None if ns.quiet else tqdm(unit="doc", dynamic_ncols=True)

    def show(p: Progress) -> None:
        if bar is None:
            return
        bar.total = p.total
        bar.set_description(p.phase)
        bar.n = p.done
        bar.set_postfix(chunks=f"{p.chunks_done}/{p.chunks_total}", bad=p.errors, refresh=False)
        bar.refresh()

    try:
        requests = job_redis(client, ns.redis_url)
        summary = run_bulk(ns.input, ns.output, options_from(ns), requests, on_progress=show)
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m embedq.bulk``: the bulk commands without the worker package."""
    parser = argparse.ArgumentParser(prog="embedq", description="embedq bulk embedding")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(argv))
