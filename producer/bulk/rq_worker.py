"""The RQ worker for bulk jobs: runs embedq's job function and nothing else.

A plain ``rq worker`` imports and calls whatever function path a job names, so anyone who can
write to Redis could run ``os.system`` on the bulk host. ``embedq bulk worker`` runs RQ with
``EmbedqJob``, which resolves only the names below (and no callbacks): any other job fails with
a refusal instead of running.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis
from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from ..protocol import shorten
from .rq_entry import embed_file

JOB_FUNCTION = "embedq.bulk.rq_entry.embed_file"
"""The function path bulk jobs are stored under."""
ALLOWED: dict[str, Callable[..., Any]] = {
    JOB_FUNCTION: embed_file,
    "embedq.bulk.job.embed_file": embed_file,  # jobs stored before the bulk package was split
    "producer.bulk.job.embed_file": embed_file,  # jobs stored before the embedq import name
}
"""The only function paths this worker runs."""


class RefusedJob(RuntimeError):
    """A job naming a function (or callback) embedq's bulk worker does not run."""


class EmbedqJob(Job):
    """An RQ job that can only be ``embed_file``: other function paths and any callbacks are
    refused when the worker resolves them, before anything is imported."""

    @property
    def func(self) -> Callable[..., Any]:
        self._refuse_callback("on_success", self._success_callback_name)
        self._refuse_callback("on_failure", self._failure_callback_name)
        self._refuse_callback("on_stopped", self._stopped_callback_name)
        name = self.func_name
        target = ALLOWED.get(name or "")
        if target is None or self.instance is not None:
            raise RefusedJob(
                f"embedq's bulk worker runs only {JOB_FUNCTION}; job {self.id} names {shorten(name)}: refused"
            )
        return target

    def _refuse_callback(self, kind: str, name: str | None) -> None:
        if name:
            raise RefusedJob(
                f"embedq's bulk worker runs no job callbacks; job {self.id} has {kind} "
                f"{shorten(name)}: refused"
            )

    @property
    def success_callback(self) -> Any:
        self._refuse_callback("on_success", self._success_callback_name)
        return None

    @property
    def failure_callback(self) -> Any:
        self._refuse_callback("on_failure", self._failure_callback_name)
        return None

    @property
    def stopped_callback(self) -> Any:
        self._refuse_callback("on_stopped", self._stopped_callback_name)
        return None


STOP_WAIT_S = 1.0
"""How long a stopping worker waits for its command-channel thread (RQ waits as long)."""


class BulkWorker(Worker):
    """RQ's worker, leaving its command channel (kill-horse, stop-job, shutdown) without waiting
    out the channel thread's poll. RQ stops that thread with redis-py's ``stop()``, which since
    redis-py 8 joins it without a bound; a thread that had lost its subscription (its connection
    was reset, or it read the unsubscribe first) sits in a 60 s wait for one, so every worker that
    finished a burst or was asked to stop hung for up to a minute before exiting."""

    def unsubscribe(self) -> None:
        """Unsubscribe, stop the channel thread (waiting at most ``STOP_WAIT_S``), close."""
        thread = self.pubsub_thread
        if thread is None:
            return
        self.log.info("Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name)
        self.pubsub.unsubscribe()
        try:
            thread.stop(timeout=STOP_WAIT_S)  # redis-py 8: stop() joins
        except TypeError:  # redis-py before 8: stop() only clears the running flag
            thread.stop()
        thread.join(timeout=STOP_WAIT_S)
        if not thread.is_alive():  # else it still waits (a daemon thread: it does not hold the exit)
            self.pubsub.close()


def bulk_worker(
    connection: redis.Redis, queues: Sequence[str], *, name: str | None = None, worker_ttl: int | None = None
) -> Worker:
    """An RQ worker on ``queues`` with the JSON serializer and ``EmbedqJob``."""
    return BulkWorker(
        [Queue(q, connection=connection, serializer=JSONSerializer, job_class=EmbedqJob) for q in queues],
        connection=connection,
        serializer=JSONSerializer,
        job_class=EmbedqJob,
        name=name,
        worker_ttl=worker_ttl,
    )
