"""``embedq eval``: retrieval quality on a query->passage set, in-process and through the queue.

The design record's argument was that the same model gives the same vectors, so retrieval
quality (their Recall@1 of 0.8533) survives the move off the GPU. This measures it: Recall@1/5/10
and MRR@10 over a corpus of every distinct passage, and checks that the queue path ranks exactly
as the in-process model does.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedq import EmbeddingClient

from .reference import ReferenceModel


@dataclass(frozen=True)
class EvalSet:
    """Queries, each with the index of its one relevant passage in ``corpus``."""

    queries: list[str]
    positives: list[int]
    corpus: list[str]


def load_pairs(
    path: str | Path, *, query_field: str = "query", passage_field: str = "passage"
) -> list[tuple[str, str]]:
    """(query, passage) pairs from JSONL (one object per line) or a SQuAD-format JSON file."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".json" or text.lstrip().startswith('{"version"') or '"data"' in text[:200]:
        squad = json.loads(text)
        return [
            (qa["question"], paragraph["context"])
            for article in squad["data"]
            for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]
        ]
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        try:
            pairs.append((str(obj[query_field]), str(obj[passage_field])))
        except KeyError as exc:
            raise ValueError(f"{path}:{n}: missing field {exc}") from None
    return pairs


def build_set(pairs: Sequence[tuple[str, str]], *, sample: int | None, seed: int) -> EvalSet:
    """Sample queries; the corpus is every distinct passage of the file (not only the sampled)."""
    corpus = list(dict.fromkeys(p for _, p in pairs))
    index = {p: i for i, p in enumerate(corpus)}
    chosen = list(pairs)
    if sample is not None and sample < len(chosen):
        chosen = random.Random(seed).sample(chosen, sample)
    return EvalSet([q for q, _ in chosen], [index[p] for _, p in chosen], corpus)


def rankings(queries: np.ndarray, passages: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Top-k passage indices per query (best first) and all scores."""
    scores = queries.astype(np.float64) @ passages.astype(np.float64).T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return top, scores


def metrics(top: np.ndarray, positives: Sequence[int]) -> dict[str, float]:
    """Recall@1/5/10 and MRR@10 for one relevant passage per query."""
    hits = top == np.asarray(positives)[:, None]
    ranks = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    return {
        "recall@1": float(np.mean((ranks >= 1) & (ranks <= 1))),
        "recall@5": float(np.mean((ranks >= 1) & (ranks <= 5))),
        "recall@10": float(np.mean((ranks >= 1) & (ranks <= 10))),
        "mrr@10": float(np.mean(np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0))),
    }


def compare_rankings(a: np.ndarray, b: np.ndarray, scores: np.ndarray, tie_eps: float) -> dict[str, int]:
    """How many queries rank identically; differing ones are 'ties' when every swapped pair's
    scores differ by less than ``tie_eps`` (float noise between batch compositions)."""
    same = (a == b).all(axis=1)
    ties = 0
    for q in np.flatnonzero(~same):
        diff = a[q] != b[q]
        swapped = np.concatenate([a[q][diff], b[q][diff]])
        s = scores[q, swapped]
        if s.max() - s.min() < tie_eps:
            ties += 1
    return {
        "identical": int(same.sum()),
        "ties": ties,
        "differ": int((~same).sum()) - ties,
        "queries": len(a),
    }


class InProcessEncoder:
    """The reference model (sentence-transformers in this process) with the prefixes a worker
    resolves for it: what the queue paths must rank exactly as."""

    def __init__(
        self,
        model: str,
        *,
        threads: int = 2,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
    ) -> None:
        from embedq.worker.encoder import resolve_prefixes

        self.reference = ReferenceModel(model, threads=threads)
        resolved = resolve_prefixes(
            model, self.reference.prompts, query_override=query_prefix, passage_override=passage_prefix
        )
        self.prefixes = resolved.as_dict()
        self.prefix_source = resolved.source

    def encode(self, texts: Sequence[str], kind: str, batch: int = 32) -> np.ndarray:
        """Vectors of ``texts`` of ``kind``, ``batch`` texts per model call."""
        return self.reference.encode(texts, self.prefixes[kind], batch_size=batch)


def through_queue(client: EmbeddingClient, texts: Sequence[str], kind: str, window: int = 64) -> np.ndarray:
    """Vectors through the workers, ``window`` texts in flight at a time."""
    out = []
    for i in range(0, len(texts), window):
        out.append(client.embed(texts[i : i + window], kind))
    return np.vstack(out)


def table(rows: Sequence[tuple[str, str, dict[str, float]]]) -> str:
    """A Markdown table of results."""
    lines = ["| path | model | Recall@1 | Recall@5 | Recall@10 | MRR@10 |", "|---|---|---|---|---|---|"]
    for path, model, m in rows:
        lines.append(
            f"| {path} | {model} | {m['recall@1']:.4f} | {m['recall@5']:.4f} | {m['recall@10']:.4f} | "
            f"{m['mrr@10']:.4f} |"
        )
    return "\n".join(lines)
