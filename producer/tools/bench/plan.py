"""What ``embedq bench`` measures: the plan, the texts each request gets, the worker variants."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..local import model_label
from ..record import RECORD_LONG_TEXT, RECORD_QUERIES

SHORT_TEXTS = RECORD_QUERIES
"""The design record's online queries (section 5.1)."""
LONG_TEXT = RECORD_LONG_TEXT
"""The design record's ~150-character store description."""

POLICY_CONFIGS = {
    "adaptive": {"EMBED_BATCH_POLICY": "adaptive", "EMBED_BATCH_WAIT_MS": "50"},
    "fixed-50ms": {"EMBED_BATCH_POLICY": "fixed", "EMBED_BATCH_WAIT_MS": "50"},
    "wait-0": {"EMBED_BATCH_POLICY": "fixed", "EMBED_BATCH_WAIT_MS": "0"},
}
"""Batching policies compared in the targets section (worker environment for each)."""


@dataclass(frozen=True)
class Plan:
    """What to measure."""

    threads: tuple[int, ...] = (1, 2, 4)
    batches: tuple[int, ...] = (1, 4, 8, 16)
    concurrency: tuple[int, ...] = (1, 5, 10)
    lengths: tuple[str, ...] = ("short", "long")
    requests: int = 100
    max_seconds: float = 10.0
    target_requests: int = 800
    policies: tuple[str, ...] = tuple(POLICY_CONFIGS)
    overhead_batches: int = 200
    backends: tuple[str, ...] = ("torch", "onnx")
    """Worker backends compared in the targets: torch runs every policy, the others the adaptive
    one on an export of the model (``export``, else made in a temporary folder)."""
    cache_hit_ratio: float = 0.5
    """Share of the texts that repeat in the query-cache variant (0: no cache variant)."""
    export: str | None = None

    @classmethod
    def quick(cls) -> Plan:
        """About four minutes on a 2-core machine with the bundled model (with the onnx export)."""
        return cls(
            threads=(2,),
            batches=(1, 8),
            concurrency=(1, 10),
            lengths=("short",),
            requests=24,
            max_seconds=2.0,
            target_requests=128,
            policies=("adaptive", "fixed-50ms"),
            overhead_batches=30,
        )

    def check(self) -> None:
        """``ValueError`` naming what is wrong with the plan."""
        unknown = set(self.policies) - set(POLICY_CONFIGS)
        if unknown:
            raise ValueError(f"unknown policies {sorted(unknown)}; choose from {sorted(POLICY_CONFIGS)}")
        bad = set(self.backends) - {"torch", "onnx", "openvino"}
        if bad or not self.backends:
            raise ValueError(f"unknown backends {sorted(bad)}; choose from torch, onnx, openvino")
        if not 0.0 <= self.cache_hit_ratio <= 1.0:
            raise ValueError(f"cache hit ratio must be within 0..1, got {self.cache_hit_ratio}")


class Texts:
    """Texts by length class; each request gets distinct texts so nothing is cached."""

    def __init__(self, short: Sequence[str], long: Sequence[str]) -> None:
        self.pools = {"short": list(short), "long": list(long)}
        self._n = 0
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path) -> Texts:
        """One text per line; lines of over 100 characters count as long."""
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
        short = [t for t in lines if len(t) <= 100] or lines
        long = [t for t in lines if len(t) > 100] or lines
        return cls(short, long)

    def take(self, length: str, n: int) -> list[str]:
        with self._lock:
            start, self._n = self._n, self._n + n
        pool = self.pools[length]
        return [f"{pool[i % len(pool)]} ({i})" for i in range(start, start + n)]


class TextSource(Protocol):
    """Where a measurement takes its texts from."""

    def take(self, length: str, n: int) -> list[str]: ...


class RepeatingTexts:
    """Texts of which a set share repeat (the questions a chatbot hears again and again), the
    rest distinct: text i repeats when ``floor((i + 1) * ratio)`` passes an integer, so the share
    is exact at any count."""

    def __init__(self, texts: Texts, ratio: float, repeated: Sequence[str]) -> None:
        self.texts = texts
        self.ratio = ratio
        self.repeated = list(repeated)
        self._n = 0
        self._lock = threading.Lock()

    def take(self, length: str, n: int) -> list[str]:
        with self._lock:
            start, self._n = self._n, self._n + n
        out = []
        for i in range(start, start + n):
            if int((i + 1) * self.ratio) > int(i * self.ratio):
                out.append(self.repeated[i % len(self.repeated)])
            else:
                out.extend(self.texts.take(length, 1))
        return out


@dataclass(frozen=True)
class Variant:
    """One worker configuration of the targets: a batching policy, a backend, the query cache."""

    name: str
    backend: str
    policy: str
    env: dict[str, str]
    cache: bool = False


def variants(plan: Plan, model: str, export_dir: str | None, cache_url: str | None) -> dict[str, Variant]:
    """The policies on torch, then each other backend (adaptive), then the cache on the last."""
    out: dict[str, Variant] = {}
    if "torch" in plan.backends:
        for policy in plan.policies:
            env = {**POLICY_CONFIGS[policy], "EMBEDDING_MODEL": model, "EMBED_THREADS": "2"}
            out[policy] = Variant(policy, "torch", policy, env)
    for backend in plan.backends:
        if backend != "torch":
            assert export_dir is not None
            env = {**POLICY_CONFIGS["adaptive"], "EMBEDDING_MODEL": export_dir, "EMBED_BACKEND": backend,
                   "EMBED_THREADS": "2"}  # fmt: skip
            out[backend] = Variant(backend, backend, "adaptive", env)
    if plan.cache_hit_ratio > 0 and cache_url:
        last = plan.backends[-1]
        base = out[last if last != "torch" else next(iter(out))]
        env = {**base.env, "EMBED_CACHE_URL": cache_url}
        name = f"{base.name}+cache"
        out[name] = Variant(name, base.backend, base.policy, env, cache=True)
    return out


def make_export(model: str, log: Callable[[str], None]) -> str:
    """An export of ``model`` in a temporary folder (``embedq-worker export``; needs the export extra)."""
    import subprocess
    import sys
    import tempfile

    target = Path(tempfile.mkdtemp(prefix="embedq-bench-export-")) / "model"
    log(f"exporting {model_label(model)} for the onnx/openvino variants into {target}")
    subprocess.run([sys.executable, "-m", "embedq.worker", "export", model, "--out", str(target)], check=True)
    return str(target)
