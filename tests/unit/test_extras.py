"""A command whose extra is missing says which extra to install, instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedq.extras import MissingExtra, require

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_module_names_its_extra() -> None:
    require("worker", "json", "msgpack")  # present: nothing happens
    with pytest.raises(
        MissingExtra, match=r"needs no_such_module_x, from the 'bulk' extra: pip install '\.\[bulk\]'"
    ):
        require("bulk", "json", "no_such_module_x", what="embedq bulk status")


def run_without(blocked: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``args`` as a Python command in a process where ``blocked`` modules cannot be imported."""
    code = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
    code += f"sys.argv = {list(args[1:])!r}\nimport runpy\nrunpy.run_module({args[0]!r}, run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_commands_say_which_extra_they_need() -> None:
    bulk = run_without(["rq", "tqdm"], "embedq.cli", "embedq", "bulk", "status", "some-job")
    assert bulk.returncode == 2 and "pip install '.[bulk]'" in bulk.stderr, bulk.stderr
    helped = run_without(["rq", "tqdm", "torch", "sentence_transformers"], "embedq.cli", "embedq", "--help")
    assert helped.returncode == 0 and "status" in helped.stdout, helped.stderr
    bench = run_without(
        ["torch", "sentence_transformers"], "embedq.cli", "embedq", "bench", "--quick", "--out", "x"
    )
    assert bench.returncode == 2 and "pip install '.[torch]'" in bench.stderr, bench.stderr
    worker = run_without(["prometheus_client"], "embedq.worker", "embedq-worker")
    assert worker.returncode == 2 and "pip install '.[worker]'" in worker.stderr, worker.stderr


def test_the_embedq_command_loads_no_tool_it_does_not_run() -> None:
    code = (
        "import sys, embedq.cli\n"
        "embedq.cli.build_parser()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('embedq.tools.bench', 'embedq.tools.evaluate', "
        "'torch', 'sentence_transformers', 'embedq.worker.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_status_never_prints_a_password() -> None:
    from embedq.cli import redacted

    assert redacted("redis://api:s3cret@redis.internal:6380/0") == "redis://api:***@redis.internal:6380/0"
    assert redacted("rediss://:s3cret@host/0") == "rediss://:***@host/0"
    assert redacted("redis://localhost:6379/0") == "redis://localhost:6379/0"
    result = subprocess.run(
        [sys.executable, "-m", "embedq.cli", "status", "--redis-url", "redis://user:s3cret@127.0.0.1:1/0"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and "cannot read redis://user:***@127.0.0.1:1/0" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
