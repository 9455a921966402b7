"""``embedq-worker``: run a worker (flags on top of the environment's settings)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields
from types import FrameType

from .settings import ENV, Settings, SettingsError

log = logging.getLogger("embedq.worker")

_TYPES = {"int": int, "float": float}


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per setting, each naming its environment variable."""
    parser = argparse.ArgumentParser(
        prog="embedq-worker",
        description="Serve embedq requests from Redis: micro-batch, encode on the CPU, reply.",
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="serve requests (the default)")
    for f in fields(Settings):
        shown = {None: "auto", MISSING: "hostname-pid"}.get(f.default, f.default)
        run.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_TYPES.get(str(f.type), str),
            default=None,
            help=f"env {ENV[f.name]} (default: {shown!r})",
        )
    return parser


def configure_logging(level: str) -> None:
    """One line per event on stderr, with time and level."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(settings: Settings) -> int:
    """Load the encoder, connect, warm up and serve until SIGTERM/SIGINT; returns the exit code."""
    import redis

    from .encoder import build_encoder
    from .loop import IDLE_BLOCK_S, Worker

    encoder = build_encoder(settings)
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=IDLE_BLOCK_S + 5.0,
        socket_connect_timeout=5.0,
        socket_keepalive=True,
        health_check_interval=30,
    )
    worker = Worker(settings, encoder, client)
    worker.warm_up()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if worker._stopping:  # a second signal: stop now; the processing list keeps our requests
            raise KeyboardInterrupt
        log.info("got %s: finishing the current batch, then stopping", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``embedq-worker`` and ``python -m worker``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
        args.insert(0, "run")
    ns = build_parser().parse_args(args)
    overrides = {k: v for k, v in vars(ns).items() if k != "command"}
    try:
        settings = Settings.from_env(**overrides)
    except SettingsError as exc:
        print(f"embedq-worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
