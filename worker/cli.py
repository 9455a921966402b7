"""``embedq-worker``: run a worker (flags on top of the environment's settings)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import MISSING, fields
from types import FrameType
from typing import Any

import redis

from embedq import connection
from embedq.extras import MissingExtra, require
from embedq.topology import CLUSTER_NEEDS_TAG, is_cluster

from .encoder import Encoder
from .liveness import MAX_AGE_S, check_alive
from .settings import ENV, FIELD_TYPES, Settings, SettingsError

log = logging.getLogger("embedq.worker")


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per setting, each naming its environment variable."""
    parser = argparse.ArgumentParser(
        prog="embedq-worker",
        description="Serve embedq requests from Redis: micro-batch, encode on the CPU, reply.",
    )
    sub = parser.add_subparsers(dest="command")
    run_parser = sub.add_parser("run", help="serve requests (the default)")
    health = sub.add_parser(
        "health",
        help="exit 0 if this host's worker (or --worker-id, or with --any any worker) has a fresh heartbeat",
    )
    health.add_argument("--any", action="store_true", help="any live worker on the queue will do")
    health.add_argument(
        "--live", action="store_true",
        help="only check that this container's worker loop turns (EMBED_ALIVE_FILE), not Redis: "
        "for a liveness probe, so a Redis outage restarts no worker",
    )  # fmt: skip
    health.add_argument("--max-age", type=float, default=MAX_AGE_S, help="--live: seconds (default 120)")
    reap = sub.add_parser("reap", help="put the requests of dead workers back on the queue, once")
    export = sub.add_parser(
        "export",
        help="export a sentence-transformers model for EMBED_BACKEND=onnx|openvino (needs embedq[export])",
    )
    export.add_argument("model", help="hub id or local directory of a sentence-transformers model")
    export.add_argument("--out", required=True, help="directory to write (must not hold an export)")
    export.add_argument(
        "--quantize",
        choices=("int8",),
        help="also write a dynamically quantized int8 graph and serve that: faster, but its vectors "
        "differ from the model's (re-embed your store)",
    )
    export.add_argument(
        "--exporter",
        choices=("torchscript", "dynamo"),
        default="torchscript",
        help="torch.onnx.export path (default torchscript: the faster graph on ONNX Runtime)",
    )
    for f in fields(Settings):
        shown = {None: "auto", MISSING: "hostname-pid"}.get(f.default, f.default)
        flag = "--" + f.name.replace("_", "-")
        options: dict[str, Any] = {"dest": f.name, "default": None}
        if FIELD_TYPES[f.name] is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = FIELD_TYPES[f.name]
        run_parser.add_argument(flag, help=f"env {ENV[f.name]} (default: {shown!r})", **options)
        if f.name in ("redis_url", "queue", "worker_id", "max_attempts", "reply_ttl", "dead_max"):
            for p in (health, reap):
                p.add_argument(flag, help=f"env {ENV[f.name]}", **options)
        if f.name == "alive_file":
            health.add_argument(flag, help=f"env {ENV[f.name]}", **options)
    return parser


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    """One line per event on stderr: text with time and level, or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def connect(settings: Settings, *, socket_timeout: float) -> redis.Redis:
    """The worker's Redis connection: timeouts so a dropped connection cannot hang it."""
    client: redis.Redis = connection.connect(settings.redis_url, socket_timeout=socket_timeout)
    return client


def join_queue(client: redis.Redis, settings: Settings, encoder: Encoder) -> None:
    """``SettingsError`` if live workers on the queue serve another model (one queue, one model);
    a Redis that cannot be read now is no reason not to start (pins still guard every request)."""
    from .identity import queue_refusal, served_name

    served = served_name(settings.served_name, encoder.name)
    try:
        why = queue_refusal(client, settings.keys, settings.worker_id, served, encoder.fingerprint)
    except redis.exceptions.RedisError as exc:
        log.warning("cannot read which model serves queue %r now (%s); starting", settings.queue, exc)
        return
    if why:
        raise SettingsError(why)


def run(settings: Settings) -> int:
    """Load the encoder, connect, warm up and serve until SIGTERM/SIGINT; returns the exit code."""
    from .backends import build_encoder
    from .cache import CacheWriter
    from .loop import IDLE_BLOCK_S, Worker

    if is_cluster(settings.redis_url) and not settings.keys.slotted:
        raise SettingsError(CLUSTER_NEEDS_TAG.format(queue=settings.queue))
    encoder = build_encoder(settings)
    client = connect(settings, socket_timeout=IDLE_BLOCK_S + 5.0)
    join_queue(client, settings, encoder)
    worker = Worker(
        settings,
        encoder,
        client,
        beat_client=connect(settings, socket_timeout=max(1.0, settings.heartbeat_ttl)),
        cache=CacheWriter.from_settings(settings, encoder.fingerprint, client),
    )
    worker.warm_up()
    if settings.metrics_port:
        worker.metrics.serve(settings.metrics_port)
        log.info("metrics on http://0.0.0.0:%d/metrics", settings.metrics_port)

    def give_up() -> None:
        log.error(
            "still busy %.0f s after the stop signal: exiting now; the reaper will requeue "
            "what this worker held",
            settings.shutdown_timeout,
        )
        logging.shutdown()
        os._exit(1)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if worker.stopping:  # a second signal: stop now; the processing list keeps our requests
            give_up()
        log.info("got %s: finishing the current batch, then stopping", signal.Signals(signum).name)
        worker.stop()
        watchdog = threading.Timer(settings.shutdown_timeout, give_up)
        watchdog.daemon = True
        watchdog.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.run()
    return 0


def health(settings: Settings, *, explicit_id: bool, any_worker: bool) -> int:
    """0 if the worker(s) asked about have a fresh heartbeat and no Redis trouble, else 1; quick
    enough for a container healthcheck."""
    from embedq.clock import time_reply_ms
    from embedq.workers import eviction_warning, live_workers

    try:
        client = connect(settings, socket_timeout=2.0)
        live = live_workers(client, settings.keys)
        now_ms = time_reply_ms(client.time())
    except redis.exceptions.RedisError as exc:
        print(f"unhealthy: cannot read heartbeats from Redis: {exc}")
        return 1
    if any_worker:
        wanted = list(live)
    elif explicit_id:
        wanted = [w for w in live if w == settings.worker_id]
    else:
        host = socket.gethostname()
        wanted = [w for w in live if w.startswith(f"{host}-")]
    if not wanted:
        print(
            f"unhealthy: no fresh heartbeat on queue {settings.queue!r} ({len(live)} live worker(s) in all)"
        )
        return 1
    code = 0
    for w in wanted:
        info = live[w]
        trouble = info.redis_trouble
        age = f"{(now_ms - info.beat_ms) / 1000:.1f}s ago" if info.beat_ms else "just now"
        if trouble:
            code = 1
            print(
                f"unhealthy: {w} has Redis trouble for {trouble.get('for_s')}s: {trouble.get('code')}: "
                f"{trouble.get('message')}"
            )
            continue
        print(f"healthy: {w} model={info.model} ({info.backend}) batches={info.batches} beat {age}")
        warning = eviction_warning(info.maxmemory_policy)
        if warning:
            print(f"warning: {warning}")
    return code


def reap(settings: Settings) -> int:
    """One reaper pass, for an operator."""
    from .reaper import Reaper

    report = Reaper(
        connect(settings, socket_timeout=10.0),
        settings.keys,
        max_attempts=settings.max_attempts,
        reply_ttl=settings.reply_ttl,
        dead_max=settings.dead_max,
        me=f"reap-{socket.gethostname()}-{os.getpid()}",
    ).reap_once()
    print(
        f"reaped {len(report.workers)} dead worker(s): {report.requeued} request(s) back on the queue, "
        f"{report.dead} dead-lettered"
    )
    return 0


def export(model: str, out: str, quantize: str | None, exporter: str = "torchscript") -> int:
    """``embedq-worker export``: the export and its fidelity check, or a clear error."""
    try:
        require("export", "torch", "sentence_transformers", "onnx", "onnxscript", what="embedq-worker export")
    except MissingExtra as exc:
        print(f"embedq-worker: {exc}", file=sys.stderr)
        return 2
    from .export import export as run_export
    from .model_config import ModelConfigError
    from .onnx_encoder import ExportError

    try:
        manifest = run_export(model, out, quantize=quantize, exporter=exporter)
    except (ExportError, ModelConfigError) as exc:
        print(f"embedq-worker export: {exc}", file=sys.stderr)
        return 1
    fidelity = manifest["fidelity"]
    print(
        f"exported {model} to {out}: min cosine vs torch {fidelity['min_cosine']:.8f}, max abs diff "
        f"{fidelity['max_abs_diff']:.2e} over {fidelity['probes']} probes; serve it with "
        f"EMBEDDING_MODEL={out} EMBED_BACKEND=onnx (or openvino)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``embedq-worker`` and ``python -m embedq.worker``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
        args.insert(0, "run")
    ns = build_parser().parse_args(args)
    command = ns.command
    if command == "export":
        configure_logging("INFO")
        return export(ns.model, ns.out, ns.quantize, ns.exporter)
    any_worker = bool(getattr(ns, "any", False))
    overrides = {k: v for k, v in vars(ns).items() if k not in ("command", "any", "live", "max_age")}
    try:
        settings = Settings.from_env(**overrides)
    except SettingsError as exc:
        print(f"embedq-worker: {exc}", file=sys.stderr)
        return 2
    if command == "health" and ns.live:
        alive, line = check_alive(settings.alive_file, ns.max_age)
        print(line)
        return 0 if alive else 1
    if command == "health":
        explicit = overrides.get("worker_id") is not None or ENV["worker_id"] in os.environ
        return health(settings, explicit_id=explicit, any_worker=any_worker)
    configure_logging(settings.log_level, settings.log_format)
    if command == "reap":
        return reap(settings)
    try:
        check_extras(settings)
    except MissingExtra as exc:
        print(f"embedq-worker: {exc}", file=sys.stderr)
        return 2
    from .onnx_encoder import ExportError

    try:
        return run(settings)
    except (SettingsError, ExportError) as exc:  # at start: a cache that may only grow, another
        log.error("%s", exc)  # model on the queue, an export that is not one or fails its probes
        return 2


def check_extras(settings: Settings) -> None:
    """``MissingExtra`` naming the extra to install when the backend's packages are missing."""
    what = f"a worker with EMBED_BACKEND={settings.backend}"
    require("worker", "prometheus_client", what="embedq-worker")
    if settings.encoder:
        return
    if settings.backend == "torch":
        require("torch", "torch", "sentence_transformers", what=what)
    elif settings.backend == "openvino":
        require("openvino", "openvino", "tokenizers", what=what)
    else:
        require("worker", "onnxruntime", "tokenizers", what=what)
