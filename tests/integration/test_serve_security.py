"""``embedq serve``'s trust boundary, on a real server process (issue 21, findings 1, 2, 7, 8): API
keys (401 in OpenAI's shape, the key's name and never the key in logs and metrics), a public
address refused without keys, body limits applied while reading (Content-Length, chunked,
slow bodies, bodies held at once, peak memory), and every bad request answered in OpenAI's
shape: malformed JSON, unknown paths, lone surrogates, token-id arrays."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.servers import ROOT, RedisServer, WorkerProcess, free_port, wait_until

pytestmark = pytest.mark.slow

KEY = "sk-test-0123456789abcdef"
OTHER_KEY = "sk-other-0123456789abcdef"
MODEL = "fake-model"
BODY_CAP = 2 * 1024 * 1024
HELD_CAP = 8 * 1024 * 1024


class Serve:
    """``embedq serve`` as a child process with API keys, small body limits, its log in a file."""

    def __init__(self, redis_url: str, queue: str, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "serve.log"
        env = {
            **os.environ,
            "EMBED_API_KEYS": f"chatbot:{KEY},batch-jobs:{OTHER_KEY}",
            "EMBED_API_MAX_BODY_BYTES": str(BODY_CAP),
            "EMBED_API_BODIES_BYTES": str(HELD_CAP),
            "EMBED_API_BODY_TIMEOUT": "2",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "embedq.cli", "serve", "--port", str(self.port),
             "--redis-url", redis_url, "--queue", queue],
            cwd=ROOT, env=env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self.up, 30, "embedq serve to listen")

    def up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory so far (VmHWM), in MB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(ln for ln in status.splitlines() if ln.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def serve(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    worker = WorkerProcess(
        redis_server.url, "it-serve-sec:requests",
        {"EMBED_ENCODER": "tests.support.fake_encoder:build", "EMBED_TEST_DIM": "8"},
    )  # fmt: skip
    server = Serve(redis_server.url, worker.queue, tmp_path_factory.mktemp("serve"))
    try:
        yield server
    finally:
        server.stop()
        worker.terminate()


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def check(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]
    return error


def test_without_a_known_key_every_route_but_healthz_is_401_in_openais_shape(serve: Serve) -> None:
    body = {"model": MODEL, "input": "hello"}
    for headers in ({}, auth("nope"), {"Authorization": f"Basic {KEY}"}, auth(KEY + "x")):
        check(httpx.post(f"{serve.url}/v1/embeddings", json=body, headers=headers), 401, "invalid_api_key")
    check(httpx.get(f"{serve.url}/metrics"), 401, "invalid_api_key")
    check(httpx.get(f"{serve.url}/v1/models"), 401, "invalid_api_key")
    refused = httpx.post(f"{serve.url}/v1/embeddings", json=body)
    assert refused.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{serve.url}/healthz").status_code == 200  # the orchestrator's probe
    # a refused caller's body is never read: a huge one is answered as fast as a small one
    started = time.perf_counter()
    big = httpx.post(f"{serve.url}/v1/embeddings", content=b"x" * (BODY_CAP - 10), headers=auth("nope"))
    assert big.status_code == 401 and time.perf_counter() - started < 5

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{serve.url}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model=MODEL, input="hello"
        )
    good = openai.OpenAI(base_url=f"{serve.url}/v1", api_key=KEY, max_retries=0)
    assert len(good.embeddings.create(model=MODEL, input=["a", "b"]).data) == 2


def test_the_keys_name_is_in_the_metrics_and_the_log_and_no_key_anywhere(serve: Serve) -> None:
    httpx.post(f"{serve.url}/embed", json={"texts": ["a"]}, headers=auth(OTHER_KEY))
    metrics = httpx.get(f"{serve.url}/metrics", headers=auth()).text
    assert 'key="batch-jobs"' in metrics and 'route="/embed"' in metrics
    wait_until(lambda: "key=batch-jobs" in serve.log(), 5, "the access line")
    for text in (metrics, serve.log()):
        assert KEY not in text and OTHER_KEY not in text


def test_a_public_address_without_keys_is_refused_at_start() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_API_")}
    refused = subprocess.run(
        [sys.executable, "-m", "embedq.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert refused.returncode == 2 and "EMBED_API_KEYS" in refused.stderr and "--no-auth" in refused.stderr
    weak = subprocess.run(
        [sys.executable, "-m", "embedq.cli", "serve", "--port", str(free_port())],
        cwd=ROOT, env={**env, "EMBED_API_KEYS": "chatbot:short"}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (
        weak.returncode == 2
        and "under 16 characters" in weak.stderr
        and "short" not in weak.stderr.split("under")[1]
    )


def raw(serve: Serve, head: bytes, chunks: list[bytes], pause: float = 0.0, timeout: float = 10) -> bytes:
    """Send a request by hand (a slow or chunked body); the response's raw bytes."""
    with socket.create_connection(("127.0.0.1", serve.port), timeout=timeout) as s:
        s.sendall(head)
        try:
            for chunk in chunks:
                time.sleep(pause)
                s.sendall(chunk)
        except OSError:
            pass  # the server answered and closed before the rest: what a limit should do
        out = b""
        while True:
            try:
                data = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            out += data
            if b"\r\n\r\n" in out and b'"error"' in out:
                break
        return out


def test_bodies_are_refused_while_they_are_read(serve: Serve) -> None:
    auth_line = f"Authorization: Bearer {KEY}\r\n".encode()
    # Content-Length over the cap: 413 before one byte of the body is read
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n" + auth_line
            + f"Content-Length: {BODY_CAP + 1}\r\n\r\n".encode())  # fmt: skip
    assert b" 413 " in raw(serve, head, [])
    # chunked, no length: refused once the cap is passed, not after the whole body
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n" + auth_line
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")  # fmt: skip
    block = b"a" * 65536
    chunk = f"{len(block):x}\r\n".encode() + block + b"\r\n"
    assert b" 413 " in raw(serve, head, [chunk] * (BODY_CAP // len(block) + 8))
    # a body that trickles in: 408 after the body timeout (2 s here), the socket freed
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n" + auth_line
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")  # fmt: skip
    started = time.perf_counter()
    answer = raw(serve, head, [b"{"] * 20, pause=0.25)
    assert b" 408 " in answer and b"body_timeout" in answer
    assert 1.5 < time.perf_counter() - started < 8


def test_concurrent_large_bodies_are_held_within_the_cap_and_memory_stays_bounded(serve: Serve) -> None:
    """Before: four ~100 MB bodies with a bogus model peaked the server at 671 MB (pod limit
    512Mi). Now each body is capped, the bodies held at once are capped, and the rest get 503."""
    pad = "y" * (BODY_CAP - 200)
    body = json.dumps({"model": "no-such-model", "input": ["a"], "user": pad}).encode()
    assert len(body) < BODY_CAP
    baseline = serve.peak_rss_mb()

    def send(_: int) -> int:
        headers = {**auth(), "Content-Type": "application/json"}
        return httpx.post(f"{serve.url}/v1/embeddings", content=body, headers=headers, timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(send, range(16)))
    peak = serve.peak_rss_mb()
    print(f"\n16 concurrent {len(body) / 2**20:.1f} MiB bodies: statuses {sorted(statuses)}, "
          f"peak RSS {peak:.0f} MB (before them {baseline:.0f} MB)")  # fmt: skip
    assert set(statuses) <= {404, 503} and 404 in statuses  # unknown model, or busy: never a 500
    assert peak < baseline + 4 * HELD_CAP / 2**20 + 50  # ~3x the held bytes, with room to spare
    assert serve.up()


def test_bad_requests_get_openais_error_shape_never_a_500(serve: Serve) -> None:
    url = f"{serve.url}/v1/embeddings"
    headers = {**auth(), "Content-Type": "application/json"}
    check(
        httpx.post(url, content=b'{"model": "fake-model", "input": ', headers=headers), 400, "invalid_request"
    )
    check(httpx.get(f"{serve.url}/no/such/path", headers=auth()), 404, "http_404")
    check(httpx.get(url, headers=auth()), 405, "http_405")
    surrogate = b'{"model": "fake-model", "input": "\\ud800 lone"}'
    error = check(httpx.post(url, content=surrogate, headers=headers), 400, "invalid_input")
    assert "surrogate" in str(error["message"])
    # what LangChain's OpenAIEmbeddings sends by default: token ids
    for ids in ([1, 2, 3], [[1, 2], [3]]):
        error = check(httpx.post(url, json={"model": MODEL, "input": ids}, headers=auth()), 400, "token_ids")
        assert "check_embedding_ctx_length=False" in str(error["message"])
    invisible = httpx.post(url, json={"model": MODEL, "input": ["\u200b\ufeff"]}, headers=auth())
    check(invisible, 400, "empty_text")
