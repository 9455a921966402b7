"""The chatbot's questions while documents are embedded, on all-MiniLM-L6-v2 and on a model of
multilingual-e5-large's exact architecture (random weights, built offline: ``embedq.tools.shaped``).

    .venv/bin/python benchmarks/production_scale.py --out benchmarks/results          # both models
    .venv/bin/python benchmarks/production_scale.py --models minilm --out /tmp/scale  # minutes

One worker at default settings (torch, 2 threads, batch budget 500 ms) and producers at default
settings (5 s timeout). For each model, measured in one run:

- in-process (sentence-transformers called directly, 2 threads): one question, 8 questions, one
  passage and 8 passages, in interleaved rounds: the design record's table;
- a lone question through the queue beside an in-process encode of it, interleaved;
- questions every 0.5 s from a chatbot thread (``EmbedqEmbeddings.embed_query``): idle, during
  ``embed_documents`` of the documents (``EmbedqEmbeddings``), and during a bulk job
  (``run_bulk``); every question's latency, every error;
- the ingestion alone: its throughput against in-process batch-8 throughput on the same texts,
  and its vectors against the in-process ones;
- MiniLM only: two ``embed_documents`` at once, with the chatbot asking.

Documents are KorQuAD 1.0 dev paragraphs of 300-500 tokens (by the model's own tokenizer) for the
e5-large-shaped model, and KorQuAD sentences (3,000 by default) for MiniLM; questions are
KorQuAD's. The data is read from ``$EMBEDQ_KORQUAD`` or ``../shared/data/korquad``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embedq import EmbedqEmbeddings, EmbedqError
from embedq.bulk import BulkOptions, run_bulk
from embedq.stats import percentile
from embedq.tools.bench import machine_facts
from embedq.tools.corpus import find_korquad, korquad_documents, korquad_pairs
from embedq.tools.local import RedisServer, WorkerProcess, bundled_model_path
from embedq.tools.reference import ReferenceModel
from embedq.tools.shaped import build_shaped_model

QUESTION_TOKENS = 20
"""e5-shaped: questions of at most this many tokens under the benchmark's tokenizer."""
ASK_EVERY_S = 0.5
"""The chatbot's pace: a question every half second."""
OMP_QUIET_S = 0.3
"""Pause before timing something else: torch's OpenMP threads spin for 200 ms after an encode."""
DESIGN_RECORD_MS = {"one question": 187, "8 questions": 423, "8 passages": 2104}
"""The design record's multilingual-e5-large on 2 threads (its section 5)."""


def spread(latencies_s: list[float]) -> dict[str, float]:
    """p50, p95, max in ms, and the count."""
    xs = sorted(x * 1000 for x in latencies_s)
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "p50_ms": round(percentile(xs, 50), 1),
        "p95_ms": round(percentile(xs, 95), 1),
        "max_ms": round(xs[-1], 1),
    }


class Chatbot:
    """A question every ``ASK_EVERY_S`` from one thread (a Python chatbot API), until stopped."""

    def __init__(self, url: str, queue: str, questions: list[str]) -> None:
        self.embeddings = EmbedqEmbeddings(url, queue=queue)
        self.questions = questions
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.embeddings.embed_query(self.questions[n % len(self.questions)] + f" ({n})")
                self.latencies.append(time.monotonic() - started)
            except EmbedqError as exc:
                self.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            n += 1
            self._stop.wait(max(0.0, ASK_EVERY_S - (time.monotonic() - started)))

    @contextmanager
    def asking(self) -> Iterator[Chatbot]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(30)

    def report(self) -> dict[str, Any]:
        return {**spread(self.latencies), "errors": len(self.errors), "first_errors": self.errors[:3]}


def token_counts(ref: ReferenceModel, texts: list[str]) -> list[int]:
    """Tokens of each text by the model's own tokenizer, with its special tokens, uncut."""
    encoded = ref.model.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def prefixes(ref: ReferenceModel) -> dict[str, str]:
    """The prefixes a worker resolves for this model (E5's for the e5-shaped one, none for MiniLM)."""
    from embedq.worker.encoder import resolve_prefixes

    return resolve_prefixes(ref.name, ref.prompts).as_dict()


def in_process_table(
    ref: ReferenceModel, questions: list[str], docs: list[str], rounds: int
) -> dict[str, Any]:
    """The design record's shapes, in interleaved rounds (medians)."""
    q, p = prefixes(ref)["query"], prefixes(ref)["passage"]
    shapes: dict[str, Callable[[], object]] = {
        "one question": lambda: ref.encode(questions[:1], q),
        "8 questions": lambda: ref.encode(questions[:8], q),
        "one passage": lambda: ref.encode(docs[:1], p),
        "8 passages": lambda: ref.encode(docs[:8], p),
    }
    for fn in shapes.values():
        fn()  # warm every shape
    times: dict[str, list[float]] = {k: [] for k in shapes}
    for _ in range(rounds):
        for name, fn in shapes.items():
            time.sleep(OMP_QUIET_S)
            times[name].append(timed(fn))
    return {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()}


def lone_question(ref: ReferenceModel, url: str, queue: str, questions: list[str], n: int) -> dict[str, Any]:
    """A lone question through the queue beside the same question in-process, interleaved."""
    client = EmbedqEmbeddings(url, queue=queue)
    prefix = prefixes(ref)["query"]
    direct, queued = [], []
    for i in range(n):
        text = questions[i % len(questions)] + f" [{i}]"
        time.sleep(OMP_QUIET_S)
        direct.append(timed(lambda text=text: ref.encode([text], prefix)))  # type: ignore[misc]
        time.sleep(OMP_QUIET_S)
        queued.append(timed(lambda text=text: client.embed_query(text)))  # type: ignore[misc]
    d, q = spread(direct), spread(queued)
    return {"in_process": d, "queue": q, "extra_p50_ms": round(q["p50_ms"] - d["p50_ms"], 1)}


def ingest(url: str, queue: str, docs: list[str]) -> tuple[np.ndarray, float]:
    """``EmbedqEmbeddings.embed_documents`` at default settings: the vectors and the seconds."""
    embeddings = EmbedqEmbeddings(url, queue=queue)
    started = time.monotonic()
    vectors = np.asarray(embeddings.embed_documents(docs), dtype=np.float32)
    return vectors, time.monotonic() - started


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


def run_model(
    name: str,
    model: str,
    ref: ReferenceModel,
    server: RedisServer,
    questions: list[str],
    docs: list[str],
    ns: Any,
) -> dict[str, Any]:
    log = lambda line: print(f"[{name}] {line}", flush=True)  # noqa: E731
    result: dict[str, Any] = {"model": name, "documents": len(docs)}
    asked = token_counts(ref, questions[:200])
    result["question_tokens"] = {"mean": round(statistics.fmean(asked), 1), "max": max(asked)}
    tokens = token_counts(ref, docs)
    result["document_tokens"] = {
        "min": min(tokens),
        "mean": round(statistics.fmean(tokens)),
        "max": max(tokens),
    }
    log(f"{len(docs)} documents, {result['document_tokens']} tokens each (by the model's tokenizer)")
    result["in_process_ms"] = in_process_table(ref, questions, docs, ns.rounds)
    log(f"in-process: {result['in_process_ms']}")
    # the in-process batch-8 baseline on the very documents the queue will embed (and its vectors)
    time.sleep(OMP_QUIET_S)
    started = time.monotonic()
    reference = ref.encode(docs, prefixes(ref)["passage"], batch_size=8)
    result["in_process_batch8_texts_per_s"] = round(len(docs) / (time.monotonic() - started), 2)
    log(f"in-process batch 8: {result['in_process_batch8_texts_per_s']} texts/s")

    queue = f"scale-{name}:requests"
    worker = WorkerProcess(server.url, queue, {"EMBEDDING_MODEL": model}, start_timeout=600)
    try:
        result["lone_question"] = lone_question(ref, server.url, queue, questions, ns.lone)
        log(f"lone question: {result['lone_question']}")
        chatbot = Chatbot(server.url, queue, questions)
        with chatbot.asking():
            time.sleep(ASK_EVERY_S * ns.idle_questions)
        result["questions_idle"] = chatbot.report()
        log(f"questions at idle: {result['questions_idle']}")

        alone = docs[: ns.alone]
        _, seconds = ingest(server.url, queue, alone)
        result["ingestion_alone"] = {"texts": len(alone), "texts_per_s": round(len(alone) / seconds, 2)}
        result["ingestion_alone"]["vs_in_process_batch8"] = round(
            result["ingestion_alone"]["texts_per_s"] / result["in_process_batch8_texts_per_s"], 3
        )
        log(f"ingestion alone: {result['ingestion_alone']}")

        chatbot = Chatbot(server.url, queue, questions)
        with chatbot.asking():
            vectors, seconds = ingest(server.url, queue, docs)
        result["during_embed_documents"] = {
            "questions": chatbot.report(),
            "ingestion_s": round(seconds, 1),
            "ingestion_texts_per_s": round(len(docs) / seconds, 2),
            "min_cosine_vs_in_process": round(min_cosine(vectors, reference), 7),
        }
        log(f"during embed_documents: {result['during_embed_documents']}")

        if ns.concurrent:
            halves = [docs[: len(docs) // 2], docs[len(docs) // 2 :]]
            outcome: list[Any] = [None, None]

            def one(k: int) -> None:
                try:
                    outcome[k] = ingest(server.url, queue, halves[k])[1]
                except EmbedqError as exc:
                    outcome[k] = f"{type(exc).__name__}: {exc}"

            chatbot = Chatbot(server.url, queue, questions)
            with chatbot.asking():
                threads = [threading.Thread(target=one, args=(k,)) for k in range(2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            result["two_ingestions"] = {"questions": chatbot.report(), "seconds": outcome}
            log(f"two ingestions at once: {result['two_ingestions']}")

        bulk_docs = docs[: ns.bulk]
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "docs.jsonl"
            source.write_text(
                "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(bulk_docs))
            )
            chatbot = Chatbot(server.url, queue, questions)
            with chatbot.asking():
                started = time.monotonic()
                run_bulk(source, Path(tmp) / "out", BulkOptions(queue=queue), server.client())
                seconds = time.monotonic() - started
        result["during_bulk"] = {
            "questions": chatbot.report(),
            "texts": len(bulk_docs),
            "texts_per_s": round(len(bulk_docs) / seconds, 2),
        }
        log(f"during a bulk job: {result['during_bulk']}")
        result["worker_log_tail"] = [ln for ln in worker.log().splitlines() if "encode cost" in ln][:1]
    finally:
        worker.terminate(60)
    return result


def passages_of(ref: ReferenceModel, paragraphs: list[str], wanted: int) -> list[str]:
    """``wanted`` passages of 300-500 tokens (by the model's tokenizer): KorQuAD paragraphs of that
    length, then longer ones cut at sentence ends into pieces of that length."""
    import re

    counts = token_counts(ref, paragraphs)
    out = [p for p, n in zip(paragraphs, counts, strict=True) if 300 <= n <= 500]
    for paragraph, n in zip(paragraphs, counts, strict=True):
        if len(out) >= wanted:
            break
        if n <= 500:
            continue
        piece: list[str] = []
        for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
            candidate = " ".join([*piece, sentence])
            if token_counts(ref, [candidate])[0] > 500:
                text = " ".join(piece)
                if piece and token_counts(ref, [text])[0] >= 300:
                    out.append(text)
                piece = [sentence]
            else:
                piece.append(sentence)
    return out[:wanted]


def korquad_texts(ns: Any) -> tuple[list[str], list[str], list[str]]:
    """(questions, paragraphs, sentences) from KorQuAD, de-duplicated, in file order."""
    path = find_korquad(ns.korquad)
    if path is None:
        sys.exit("KorQuAD 1.0 dev not found: set EMBEDQ_KORQUAD or --korquad (see the module docstring)")
    pairs = list(korquad_pairs(path))
    questions = list(dict.fromkeys(q for q, _ in pairs))
    paragraphs = list(dict.fromkeys(p for _, p in pairs))
    sentences = [d["text"] for d in korquad_documents(path) if d["id"].startswith("s")]
    return questions, paragraphs, sentences


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Production scale: questions while documents are embedded",
        "",
        f"{m['cpu']}, {m['cores']} cores; torch {m['torch']}; {m['date']}. One worker at default settings "
        "(torch, 2 threads, batch budget 500 ms), producers at default settings (5 s timeout), a "
        f"question every {ASK_EVERY_S} s. `benchmarks/production_scale.py`.",
        "",
        "## In-process (2 threads), beside the design record's multilingual-e5-large",
        "",
        "| model | one question | 8 questions | one passage | 8 passages | batch-8 throughput |",
        "|---|---:|---:|---:|---:|---:|",
        f"| design record: multilingual-e5-large | {DESIGN_RECORD_MS['one question']} ms | "
        f"{DESIGN_RECORD_MS['8 questions']} ms | - | {DESIGN_RECORD_MS['8 passages']} ms (long texts) | - |",
    ]
    for r in results["models"]:
        t = r["in_process_ms"]
        lines.append(
            f"| {r['model']} | {t['one question']} ms | {t['8 questions']} ms | {t['one passage']} ms | "
            f"{t['8 passages']} ms | {r['in_process_batch8_texts_per_s']} texts/s |"
        )
    lines += [
        "",
        "Questions: "
        + "; ".join(
            f"{r['model']} {r['question_tokens']['mean']} tokens on average" for r in results["models"]
        )
        + " (KorQuAD's, by the model's tokenizer).",
        "",
        "## The chatbot's questions",
        "",
        "| model | lone question: queue vs in-process p50 | idle p50 / p95 "
        "| during embed_documents p50 / p95 / max (errors) | during a bulk job p50 / p95 / max (errors) |",
        "|---|---|---|---|---|",
    ]
    for r in results["models"]:
        lone, idle = r["lone_question"], r["questions_idle"]
        during, bulk = r["during_embed_documents"]["questions"], r["during_bulk"]["questions"]
        lines.append(
            f"| {r['model']} | {lone['queue']['p50_ms']} vs {lone['in_process']['p50_ms']} ms "
            f"({lone['extra_p50_ms']:+} ms) | {idle['p50_ms']} / {idle['p95_ms']} ms | "
            f"{during['p50_ms']} / {during['p95_ms']} / {during['max_ms']} ms ({during['errors']}) | "
            f"{bulk['p50_ms']} / {bulk['p95_ms']} / {bulk['max_ms']} ms ({bulk['errors']}) |"
        )
    lines += [
        "",
        "## The ingestion",
        "",
        "| model | documents (tokens) | alone: texts/s (vs in-process batch 8) | with questions: texts/s, "
        "seconds | vectors vs in-process (min cosine) | bulk job with questions: texts/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["models"]:
        a, d, b, tk = (
            r["ingestion_alone"],
            r["during_embed_documents"],
            r["during_bulk"],
            r["document_tokens"],
        )
        lines.append(
            f"| {r['model']} | {r['documents']} ({tk['min']}-{tk['max']}, mean {tk['mean']}) | "
            f"{a['texts_per_s']} ({a['vs_in_process_batch8']:.2f}x) | {d['ingestion_texts_per_s']}, "
            f"{d['ingestion_s']} s | {d['min_cosine_vs_in_process']} | {b['texts_per_s']} |"
        )
    for r in results["models"]:
        if "two_ingestions" in r:
            two = r["two_ingestions"]
            q = two["questions"]
            lines += [
                "",
                f"{r['model']}, two `embed_documents` at once: {two['seconds']} s; questions meanwhile p50 "
                f"{q['p50_ms']} / p95 {q['p95_ms']} / max {q['max_ms']} ms, {q['errors']} errors.",
            ]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, r in zip(axes[0], models, strict=True):
        labels, p50, p95 = [], [], []
        for key, label in (
            ("questions_idle", "idle"),
            ("during_embed_documents", "embed_documents"),
            ("during_bulk", "bulk job"),
        ):
            q = r[key] if key == "questions_idle" else r[key]["questions"]
            labels.append(label)
            p50.append(q.get("p50_ms", 0))
            p95.append(q.get("p95_ms", 0))
        x = np.arange(len(labels))
        ax.bar(x - 0.2, p50, 0.4, label="p50")
        ax.bar(x + 0.2, p95, 0.4, label="p95")
        ax.set_xticks(x, labels)
        ax.set_ylabel("question latency (ms)")
        ax.set_title(r["model"])
        ax.legend()
    fig.suptitle("The chatbot's questions (one every 0.5 s) while documents are embedded")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--models", default="minilm,e5-shaped", help="minilm and/or e5-shaped")
    parser.add_argument(
        "--korquad", help="the KorQuAD dev file or its folder (default: $EMBEDQ_KORQUAD, ../shared)"
    )
    parser.add_argument(
        "--shaped-dir", help="an e5-large-shaped model built earlier (default: build one, then delete it)"
    )
    parser.add_argument(
        "--paragraphs", type=int, default=200, help="e5-shaped: documents to embed (default 200)"
    )
    parser.add_argument(
        "--minilm-texts", type=int, default=3000, help="MiniLM: documents to embed (default 3000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the in-process table")
    parser.add_argument("--lone", type=int, default=20, help="lone questions, queue vs in-process")
    parser.add_argument("--idle-questions", type=int, default=20)
    ns = parser.parse_args()
    questions, paragraphs, sentences = korquad_texts(ns)
    results: dict[str, Any] = {"machine": machine_facts(), "models": []}
    server = RedisServer()
    built: tempfile.TemporaryDirectory[str] | None = None
    try:
        for name in ns.models.split(","):
            if name == "minilm":
                model = bundled_model_path()
                ref = ReferenceModel(model, threads=2)
                docs = sentences[: ns.minilm_texts]
                asked = questions
                options = argparse.Namespace(**vars(ns), alone=len(docs), bulk=len(docs), concurrent=True)
            else:
                if ns.shaped_dir:
                    model = ns.shaped_dir
                else:
                    built = tempfile.TemporaryDirectory(prefix="embedq-e5-shaped-")
                    print("building the e5-large-shaped model (random weights, ~2.2 GB) ...", flush=True)
                    model = str(build_shaped_model(Path(built.name) / "e5-large-shaped"))
                ref = ReferenceModel(model, threads=2)
                docs = passages_of(ref, paragraphs, ns.paragraphs)
                # short questions, as XLM-R's tokenizer cuts a chatbot's (~10-20 tokens): this
                # WordPiece vocabulary splits Korean finer, and would price questions too high
                counts = token_counts(ref, questions)
                asked = [q for q, n in zip(questions, counts, strict=True) if n <= QUESTION_TOKENS]
                options = argparse.Namespace(
                    **vars(ns), alone=min(48, len(docs)), bulk=min(40, len(docs)), concurrent=False
                )
            results["models"].append(run_model(name, model, ref, server, asked, docs, options))
            del ref
    finally:
        server.stop()
        if built is not None:
            built.cleanup()
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "production_scale.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    (ns.out / "production_scale.md").write_text(markdown(results))
    chart(results, ns.out / "production_scale.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
