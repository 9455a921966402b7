"""The torch-free encoder: an exported model (``embedq-worker export``) run by ONNX Runtime or
OpenVINO, with the model's own tokenizer, pooling and normalization in numpy.

It computes what ``SentenceTransformer.encode`` computes (the export checked that on a probe
set before reporting success), so the vectors match a store built with the torch model. It
needs onnxruntime (or openvino), tokenizers and numpy: no torch, no sentence-transformers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Encoding

from .encoder import Prefixes, fingerprint, resolve_prefixes
from .model_config import ModelConfig

log = logging.getLogger("embedq.worker")

MANIFEST = "embedq_export.json"
"""The export's description, written last: its presence means a complete, checked export."""
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
PROBES_FILE = "probes.json"
"""The export's probe inputs and the token ids the torch path gave them (``worker/probes.py``)."""
BACKENDS = ("torch", "onnx", "openvino")


class ExportError(RuntimeError):
    """A directory that is not a usable export, or an export that failed its check."""


@dataclass(frozen=True)
class Export:
    """An exported model directory and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Export:
        """The export in ``path``, or ``ExportError`` saying how to make one."""
        root = Path(path)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise ExportError(
                f"{str(root)!r} is not an embedq export (no {MANIFEST}): make one with "
                f"`embedq-worker export MODEL --out {root}`, or serve the model with EMBED_BACKEND=torch"
            )
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        for name in (manifest.get("onnx", ONNX_FILE), TOKENIZER_FILE):
            if not (root / name).is_file():
                raise ExportError(f"export {str(root)!r} lacks {name}: export the model again")
        return cls(root, manifest)

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.from_json(self.manifest["config"])

    @property
    def onnx_path(self) -> Path:
        return self.path / str(self.manifest.get("onnx", ONNX_FILE))

    @property
    def fingerprint(self) -> str:
        """What identifies these exact vectors: the source model and the export's own hash."""
        return str(self.manifest.get("sha256", ""))


MEMO_MAX = 4096
"""Texts whose tokens ``Tokens.counts`` keeps for the encode that follows (a worker holds a
batch or two; past this the memo starts again, so a stray count never grows it)."""


class Tokens:
    """The model's tokenizer (``tokenizers``, no transformers): ids, masks and type ids, padded,
    cut to the model's window as sentence-transformers cuts them.

    The worker counts a request's tokens when it takes it (for its cost and window checks), then
    encodes it: a text within the window tokenizes the same cut or uncut, so ``counts`` keeps
    those and ``batch`` uses them instead of tokenizing the text a second time."""

    def __init__(self, path: Path, config: ModelConfig, input_names: Sequence[str], pad_id: int) -> None:
        from tokenizers import Tokenizer

        self.config = config
        self.input_names = list(input_names)
        self.pad_id = pad_id
        self.uncut = Tokenizer.from_file(str(path))
        self.uncut.no_truncation()
        self.uncut.no_padding()
        self.cut = Tokenizer.from_file(str(path))
        self.cut.no_padding()
        if config.max_seq_length:
            self.cut.enable_truncation(max_length=config.max_seq_length)
        else:
            self.cut.no_truncation()
        self._memo: dict[str, Encoding] = {}

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """As sentence-transformers prepares texts: stripped, lowercased if the model says so."""
        out = [t.strip() for t in texts]
        return [t.lower() for t in out] if self.config.lowercase else out

    def counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, uncut, special tokens included (those within the window are kept for
        the encode: see the class)."""
        prepared = self.prepare(texts)
        encodings = self.uncut.encode_batch(prepared)
        window = self.config.max_seq_length
        if len(self._memo) + len(prepared) > MEMO_MAX:
            self._memo.clear()
        for text, e in zip(prepared, encodings, strict=True):
            if not window or len(e.ids) <= window:
                self._memo[text] = e
        return [len(e.ids) for e in encodings]

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The token ids of each text as the model is fed them: prepared, cut, unpadded."""
        return [list(e.ids) for e in self.cut.encode_batch(self.prepare(texts))]

    def verify(self, recorded: dict[str, Any]) -> None:
        """``ExportError`` unless this tokenizer gives the ids recorded at export on its probes
        (a tokenizers upgrade, or an edited tokenizer file, can change them)."""
        inputs, want = recorded["inputs"], recorded["token_ids"]
        got = self.ids(inputs)
        differ = [i for i, (a, b) in enumerate(zip(want, got, strict=True)) if a != b]
        if differ:
            first = inputs[differ[0]]
            raise ExportError(
                f"this tokenizer gives other token ids than the model's own on {len(differ)} of "
                f"{len(inputs)} probes recorded at export (first: {first[:60]!r}): the vectors would "
                "differ from the model's. Was tokenizers upgraded or tokenizer.json edited? Export the "
                "model again with this environment"
            )

    def batch(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The model's inputs for ``texts``: int64 matrices padded to the longest."""
        prepared = self.prepare(texts)
        kept = [self._memo.pop(t, None) for t in prepared]
        missing = [t for t, e in zip(prepared, kept, strict=True) if e is None]
        fresh = iter(self.cut.encode_batch(missing) if missing else [])
        encodings = [e if e is not None else next(fresh) for e in kept]
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
            types[row, :n] = e.type_ids
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: inputs[name] for name in self.input_names}


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Token vectors to one vector per text, as sentence-transformers' Pooling module does."""
    if mode == "cls":
        return hidden[:, 0]
    weights = mask[..., None].astype(hidden.dtype)
    if mode == "max":
        return np.where(weights > 0, hidden, np.finfo(hidden.dtype).min).max(axis=1)
    summed = (hidden * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    if mode == "mean_sqrt_len":
        return summed / np.sqrt(counts)
    return summed / counts


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit length rows (as torch.nn.functional.normalize, eps 1e-12)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


PRECISIONS = ("f32", "bf16")
BF16_MIN_COSINE = 0.9999
"""bf16 is served only when every probe's vector reaches this cosine against f32's (measured:
0.99996-0.99999 on MiniLM, a multilingual E5 and an e5-large-shaped model)."""


class OnnxEncoder:
    """An exported model on ONNX Runtime (``runtime="onnx"``) or OpenVINO (``"openvino"``, its
    inference precision pinned to f32 so the vectors stay exact)."""

    def __init__(
        self,
        path: str | Path,
        *,
        runtime: str = "onnx",
        threads: int = 2,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        verify: bool = True,
        precision: str = "f32",
        min_cosine: float = BF16_MIN_COSINE,
    ) -> None:
        """``verify``: check the tokenizer against the export's recorded probe ids (always, when
        serving; the export itself checks differently). ``precision="bf16"`` (OpenVINO only): the
        CPU's bf16 inference, served only if its vectors on the export's probes reach
        ``min_cosine`` against f32, and under a fingerprint of its own."""
        if runtime not in ("onnx", "openvino"):
            raise ExportError(f"unknown runtime {runtime!r}: onnx or openvino")
        if precision not in PRECISIONS or (precision == "bf16" and runtime != "openvino"):
            raise ExportError(f"precision {precision!r}: f32, or bf16 with EMBED_BACKEND=openvino")
        self.precision = precision
        self.fidelity: float | None = None
        """bf16's min cosine against f32 on the probes, when bf16 is served."""
        self.export = Export.open(path)
        manifest = self.export.manifest
        self.config = self.export.config
        self.runtime = runtime
        self.threads = threads
        self.name = str(manifest.get("source") or path)
        self.dim = self.config.dim
        self.max_tokens: int | None = self.config.max_seq_length
        own = manifest.get("prefixes") or {}
        resolved = resolve_prefixes(
            self.name, self.config.prompts, query_override=query_prefix, passage_override=passage_prefix
        )
        if query_prefix is None and passage_prefix is None and own:
            resolved = Prefixes(query=own.get("query", ""), passage=own.get("passage", ""), source="export")
        self.prefix_source = resolved.source
        self.prefixes = resolved.as_dict()
        self.tokens = Tokens(
            self.export.path / TOKENIZER_FILE, self.config, manifest["input_names"], int(manifest["pad_id"])
        )
        probes_path = self.export.path / PROBES_FILE
        if verify and probes_path.is_file():
            self.tokens.verify(json.loads(probes_path.read_text(encoding="utf-8")))
        elif verify:
            log.warning(
                "export %s has no %s (made by an older embedq): its tokenizer is not verified; "
                "export it again to have it checked at every start",
                self.export.path,
                PROBES_FILE,
            )
        self._run = self._onnxruntime() if runtime == "onnx" else self._openvino()
        if self.precision == "bf16":
            self._gate_bf16(probes_path, min_cosine)
        identity: dict[str, object] = {
            "backend": self.backend,
            "model": self.name,
            "export": self.export.fingerprint,
            "prefixes": self.prefixes,
            "config": self.config.as_json(),
        }
        if self.precision != "f32":
            identity["precision"] = self.precision  # near-exact vectors are another model's
        self.fingerprint = fingerprint(identity)
        """What identifies these vectors (the query cache keys on it): the export's own hash."""

    @property
    def backend(self) -> str:
        """What the heartbeat reports: the runtime, and int8 or bf16 when not exact f32."""
        quantized = self.export.manifest.get("quantized")
        if quantized:
            return f"{self.runtime}-{quantized}"
        return f"{self.runtime}-bf16" if self.precision == "bf16" else self.runtime

    def _embed_inputs(self, run: Any, inputs: Sequence[str]) -> np.ndarray:
        batch = self.tokens.batch(list(inputs))
        hidden = run(batch).astype(np.float32, copy=False)
        return np.asarray(normalize(pool(hidden, batch["attention_mask"], self.config.pooling)))

    def _gate_bf16(self, probes_path: Path, min_cosine: float) -> None:
        """Serve bf16 only where it is near-exact: its vectors on the export's probes against
        f32's, each probe alone; ``ExportError`` below ``min_cosine``."""
        if not probes_path.is_file():
            raise ExportError(f"bf16 needs the export's {PROBES_FILE} to check its fidelity: export again")
        inputs = json.loads(probes_path.read_text(encoding="utf-8"))["inputs"]
        exact = self._openvino("f32")
        worst = 1.0
        for text in inputs:
            a, b = self._embed_inputs(self._run, [text]), self._embed_inputs(exact, [text])
            worst = min(worst, float((a * b).sum()))
        self.fidelity = worst
        if worst < min_cosine:
            raise ExportError(
                f"bf16 fidelity on {len(inputs)} probes: min cosine {worst:.6f} against f32, under "
                f"EMBED_PRECISION_MIN_COSINE {min_cosine}: not served (EMBED_PRECISION=f32 is exact)"
            )
        log.info(
            "bf16 fidelity on %d probes: min cosine %.6f against f32 (>= %s)", len(inputs), worst, min_cosine
        )

    def _onnxruntime(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(
            str(self.export.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        output = session.get_outputs()[0].name

        def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            return np.asarray(session.run([output], inputs)[0])

        return run

    def _openvino(self, precision: str | None = None) -> Any:
        import openvino as ov

        core = ov.Core()
        wanted = precision or self.precision
        compiled = core.compile_model(
            core.read_model(str(self.export.onnx_path)),
            "CPU",
            {
                # f32 unless asked: OpenVINO's default on CPUs with bf16 is bf16 (close, not exact)
                "INFERENCE_PRECISION_HINT": wanted,
                "INFERENCE_NUM_THREADS": self.threads,
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        actual = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if precision is None and wanted == "bf16" and "bf16" not in actual:
            log.warning(
                "EMBED_PRECISION=bf16, but this CPU has no bf16 inference (AVX512-BF16 or AMX): "
                "OpenVINO runs f32, and the vectors are the exact ones"
            )
            self.precision = "f32"
        request = compiled.create_infer_request()

        def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            return np.asarray(request.infer(inputs)[compiled.output(0)])

        return run

    @classmethod
    def from_settings(cls, settings: Any) -> OnnxEncoder:
        """The encoder a worker with these settings uses."""
        os.environ.setdefault("OMP_NUM_THREADS", str(settings.threads))
        return cls(
            settings.model,
            runtime=settings.backend,
            threads=settings.threads,
            query_prefix=settings.query_prefix,
            passage_prefix=settings.passage_prefix,
            precision=settings.precision,
            min_cosine=settings.precision_min_cosine,
        )

    def _inputs(self, texts: Sequence[str], kinds: Sequence[str]) -> list[str]:
        return [self.prefixes[k] + t for k, t in zip(kinds, texts, strict=True)]

    def token_counts(self, texts: Sequence[str], kinds: Sequence[str]) -> list[int]:
        """Tokens per text with its prefix and the special tokens, uncut."""
        return self.tokens.counts(self._inputs(texts, kinds))

    def encode(self, texts: Sequence[str], kinds: Sequence[str]) -> np.ndarray:
        """One float32 row per text, in order."""
        inputs = self.tokens.batch(self._inputs(texts, kinds))
        hidden = self._run(inputs).astype(np.float32, copy=False)
        vectors = pool(hidden, inputs["attention_mask"], self.config.pooling)
        return np.ascontiguousarray(normalize(vectors), dtype=np.float32)
