"""Which model a worker serves, as producers name it, and the checks that keep a vector from
ever coming from another model than the one its caller expects.

The served name (``EMBED_SERVED_NAME``) is what the OpenAI ``model`` field, the clients' ``model=``
pin and ``/v1/models`` use: by default the hub id when the model is one, else the name the
directory gives away (a Hugging Face cache path names its repository), else the folder's name.
The fingerprint (weights or export, backend, prefixes, pooling, window) tells two models apart
even under one name. A worker refuses to join a queue whose live workers serve another
fingerprint (one queue per model: a fleet serves several models on several queues), and refuses
each request pinned to another model with ``model_mismatch``.
"""

from __future__ import annotations

import re
from pathlib import Path

from embedq.protocol import Keys, Request
from embedq.workers import live_workers

_HF_CACHE = re.compile(r"models--([^/\\]+)--([^/\\]+)")


def served_name(setting: str, model: str) -> str:
    """``setting`` if set; else the hub id ``model`` is, or that a local path names."""
    if setting:
        return setting
    path = Path(model)
    if not path.exists():
        return model  # a hub id
    cached = _HF_CACHE.search(str(path.resolve()))
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    parts = [p for p in path.resolve().parts if p not in ("/", "model")]
    return parts[-1] if parts else model


def pin_refusal(request: Request, served: str, model: str, fingerprint: str) -> str | None:
    """Why this worker must not answer ``request`` (pinned to another model), or None."""
    if request.model is not None and request.model not in (served, model):
        return (
            f"this request asks for model {request.model!r}, but this worker serves {served!r} "
            f"(fingerprint {fingerprint or '-'}): its queue is served by another model. Send it to "
            "the queue of the model it asks for (embedq status lists them)"
        )
    if request.fingerprint is not None and request.fingerprint != fingerprint:
        return (
            f"this request is pinned to fingerprint {request.fingerprint}, but this worker serves "
            f"{served!r} with fingerprint {fingerprint or '-'}: the model changed under the caller "
            "(a new model, export, prefix or window). Re-pin only after re-embedding the vector store"
        )
    return None


def queue_refusal(client: object, keys: Keys, me: str, served: str, fingerprint: str) -> str | None:
    """Why this worker must not join its queue (live workers there serve another model), or None."""
    others = [
        beat
        for worker_id, beat in live_workers(client, keys).items()
        if worker_id != me
        and (
            (fingerprint and beat.fingerprint and beat.fingerprint != fingerprint)
            or (beat.served_name and beat.served_name != served)  # pins by name must mean one model
        )
    ]
    if not others:
        return None
    beat = others[0]
    return (
        f"queue {keys.queue!r} is served by {beat.served_name or beat.model!r} (fingerprint "
        f"{beat.fingerprint}, worker {beat.worker}); this worker serves {served!r} (fingerprint "
        f"{fingerprint}). One queue serves one model, so that no call gets vectors of two: give this "
        "model its own EMBED_QUEUE (embedq serve routes to it by name), or stop those workers first"
    )
