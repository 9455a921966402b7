"""``embedq-worker export MODEL --out DIR``: a sentence-transformers model as a self-contained
directory that a worker serves without torch (``EMBED_BACKEND=onnx`` or ``openvino``).

The transformer goes to ONNX in fp32 (``torch.onnx.export``, no optimum; weights in external
data, so models over 2 GB such as multilingual-e5-large fit), beside it the tokenizer and a
manifest with the pooling, normalization, token window and prefixes. Before it reports success
the export encodes a probe set (Korean and English, short and long, query and passage) with the
torch model and with the export itself: the vectors must agree (min cosine >= 0.99999), and that
figure is written into the manifest. A failed check is an error, never a silently different
model. Needs the ``export`` extra (torch, sentence-transformers, onnx, onnxscript).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .encoder import SentenceTransformerEncoder
from .model_config import read_model_config
from .onnx_encoder import MANIFEST, ONNX_FILE, TOKENIZER_FILE, ExportError, OnnxEncoder

log = logging.getLogger("embedq.export")

EXPORTERS = {"torchscript": 17, "dynamo": 18}
"""``torch.onnx.export`` paths and their opsets. The TorchScript exporter is the default: its graph
runs 15-25% faster on ONNX Runtime than the dynamo exporter's (benchmarks/results/backends.md),
and the fidelity check holds either to the same bar."""
MIN_COSINE = 0.99999
"""Agreement an fp32 export must reach with the torch model on every probe."""
PROBES = [
    ("query", "연남 카페 추천해줘"),
    ("query", "강남역 맛집 어디야?"),
    ("query", "How do I reset my password?"),
    (
        "passage",
        "이 매장은 브런치와 스페셜티 커피를 함께 제공하며, 평일 오후에 방문객이 많고 주차 공간이 협소합니다.",
    ),
    ("passage", "The quick brown fox jumps over the lazy dog near the riverbank at dawn."),
    ("passage", "서울의 대중교통은 지하철과 버스로 이루어져 있으며 환승 할인이 적용됩니다. " * 60),
    ("passage", "A long English passage about retrieval augmented generation and vector stores. " * 60),
    ("query", "x"),
]
"""Korean and English, short and long (over the token window), query and passage."""


def _source_dir(model: str) -> Path:
    """The local directory of a model given as a path or a hub id (downloaded if need be)."""
    path = Path(model)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model))


def export(
    model: str,
    out: str | Path,
    *,
    quantize: str | None = None,
    exporter: str = "torchscript",
    opset: int | None = None,
) -> dict[str, Any]:
    """Export ``model`` into ``out`` and check it; returns the manifest."""
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}: {' or '.join(EXPORTERS)}")
    opset = opset or EXPORTERS[exporter]
    import torch

    target = Path(out)
    if (target / MANIFEST).exists():
        raise ExportError(f"{target} already holds an export: choose another --out or delete it")
    source = _source_dir(model)
    config = read_model_config(source)  # refuses module types the torch-free path does not implement
    reference = SentenceTransformerEncoder(str(source) if Path(model).is_dir() else model, threads=2)
    if not (source / TOKENIZER_FILE).is_file():
        raise ExportError(
            f"{source} has no {TOKENIZER_FILE} (a fast tokenizer): it cannot be served without torch"
        )
    target.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    transformer: Any = reference.model[0]
    auto_model: Any = transformer.auto_model.eval()
    if hasattr(auto_model, "set_attn_implementation"):
        auto_model.set_attn_implementation("eager")  # traceable attention; the same numbers
    tokenizer = reference.model.tokenizer
    sample = tokenizer(["embedq export", "a second, longer sample text"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class Wrapped(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, tensors, strict=True))).last_hidden_state

    if exporter == "dynamo":
        _export_dynamo(torch, Wrapped(auto_model), sample, names, config, target, opset)
    else:
        _export_torchscript(torch, Wrapped(auto_model), sample, names, target, opset)
    if quantize == "int8":
        _quantize_int8(target)
    elif quantize is not None:
        raise ExportError(f"unknown --quantize {quantize!r}: int8")
    shutil.copy(source / TOKENIZER_FILE, target / TOKENIZER_FILE)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    onnx_name = "model.int8.onnx" if quantize else ONNX_FILE
    manifest: dict[str, Any] = {
        "format": 1,
        "source": model,
        "onnx": onnx_name,
        "config": config.as_json(),
        "prefixes": dict(reference.prefixes),
        "prefix_source": reference.prefix_source,
        "input_names": names,
        "pad_id": int(pad_id),
        "quantized": quantize,
        "exporter": exporter,
        "opset": opset,
        "torch": torch.__version__,
        "sha256": _digest(target, [onnx_name, TOKENIZER_FILE]),
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")  # provisional
    fidelity = check(reference, OnnxEncoder(target, runtime="onnx"))
    manifest["fidelity"] = fidelity
    manifest["export_s"] = round(time.monotonic() - started, 1)
    if quantize is None and fidelity["min_cosine"] < MIN_COSINE:
        (target / MANIFEST).unlink()
        raise ExportError(
            f"the export of {model} does not reproduce the torch model: min cosine "
            f"{fidelity['min_cosine']:.7f} < {MIN_COSINE} on the probe set ({fidelity['worst']!r}); "
            "nothing was written to serve"
        )
    (target / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    log.info("exported %s to %s: min cosine vs torch %.8f", model, target, fidelity["min_cosine"])
    return manifest


def _export_dynamo(
    torch: Any, module: Any, sample: Any, names: list[str], config: Any, target: Path, opset: int
) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    tokens = torch.export.Dim("tokens", min=1, max=max(config.max_seq_length or 512, 8) * 4)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            tuple(sample[n] for n in names),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_shapes=(tuple({0: batch, 1: tokens} for _ in names),),
            opset_version=opset,
            dynamo=True,
        )
    if program is None:
        raise ExportError("torch.onnx.export (dynamo) returned no program")
    program.save(str(target / ONNX_FILE), external_data=True)


def _export_torchscript(
    torch: Any, module: Any, sample: Any, names: list[str], target: Path, opset: int
) -> None:
    """The TorchScript exporter, then one external-data file beside the graph (as dynamo writes
    it), whatever the model's size: e5-large's 2.24 GB exceed protobuf's 2 GB limit."""
    import warnings

    import onnx

    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        raw = Path(scratch) / ONNX_FILE
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation and tracer notes; the fidelity check decides
            torch.onnx.export(
                module,
                tuple(sample[n] for n in names),
                str(raw),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
        graph = onnx.load(str(raw), load_external_data=True)
        onnx.save_model(
            graph,
            str(target / ONNX_FILE),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=ONNX_FILE + ".data",
            size_threshold=1024,
        )
    for path in target.iterdir():
        if path.is_file():
            path.chmod(0o644)  # onnx writes its data file 0600: a non-root worker must read it


def check(reference: SentenceTransformerEncoder, exported: OnnxEncoder) -> dict[str, Any]:
    """Both encoders on the probe set, one text at a time and as one batch: the lowest cosine."""
    kinds = [k for k, _ in PROBES]
    texts = [t for _, t in PROBES]
    want = reference.encode(texts, kinds)
    got_batch = exported.encode(texts, kinds)
    got_single = np.vstack([exported.encode([t], [k]) for k, t in PROBES])
    cosines = np.minimum(_cosines(want, got_batch), _cosines(want, got_single))
    worst = int(np.argmin(cosines))
    return {
        "min_cosine": float(cosines.min()),
        "max_abs_diff": float(max(np.abs(want - got_batch).max(), np.abs(want - got_single).max())),
        "probes": len(PROBES),
        "worst": texts[worst][:60],
    }


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.asarray((a64 * b64).sum(axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)))


def _quantize_int8(target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(target / ONNX_FILE),
        str(target / "model.int8.onnx"),
        weight_type=QuantType.QInt8,
        use_external_data_format=False,
    )


def _digest(root: Path, names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for name in sorted({*names, *(p.name for p in root.glob("*.data"))}):
        path = root / name
        if path.is_file():
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()
