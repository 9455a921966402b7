"""``embedq-worker export MODEL --out DIR``: a sentence-transformers model as a self-contained
directory that a worker serves without torch (``EMBED_BACKEND=onnx`` or ``openvino``).

The transformer goes to ONNX in fp32 (``torch.onnx.export``, no optimum; weights in external
data, so models over 2 GB such as multilingual-e5-large fit), beside it the tokenizer the torch
path actually runs (serialized from the loaded model, not a copy of a file: a library may build
a model's tokenizer differently from its ``tokenizer.json``) and a manifest with the pooling,
normalization, token window and prefixes. Before it reports success the export runs the probe
set (``probes``: ~220 texts in many scripts, with the characters normalizers treat specially,
and texts over the window) through the torch model and through the export: every token id must
be the same, and the vectors must agree (min cosine >= 0.99999). The probes and their token ids
are written into the export (``probes.json``), and a worker serving it checks at start that its
tokenizer still gives those ids. A failed check is an error, never a silently different model.
Needs the ``export`` extra (torch, sentence-transformers, onnx, onnxscript).
"""

from __future__ import annotations

import dataclasses
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
from .onnx_encoder import MANIFEST, ONNX_FILE, PROBES_FILE, TOKENIZER_FILE, ExportError, OnnxEncoder
from .probes import probes

log = logging.getLogger("embedq.export")

EXPORTERS = {"torchscript": 17, "dynamo": 18}
"""``torch.onnx.export`` paths and their opsets. The TorchScript exporter is the default: its graph
runs 15-25% faster on ONNX Runtime than the dynamo exporter's (benchmarks/results/backends.md),
and the fidelity check holds either to the same bar."""
MIN_COSINE = 0.99999
"""Agreement an fp32 export must reach with the torch model on every probe."""
PROBES = probes()
"""(kind, text) of the fidelity check: see ``worker/probes.py``."""
SINGLES = 24
"""Probes also encoded one at a time (padding must change nothing); the rest in batches."""
CHECK_BATCH = 16


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
    # the window is the one the torch path cuts at (sentence-transformers may take it from the
    # tokenizer's config, or a default), whatever the files say
    config = dataclasses.replace(config, max_seq_length=reference.max_tokens)
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
    save_tokenizer(reference, source, target)
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
    inputs = [reference.prefixes[k] + t for k, t in PROBES]
    (target / PROBES_FILE).write_text(
        json.dumps({"inputs": inputs, "token_ids": torch_token_ids(reference, inputs)}, ensure_ascii=False),
        encoding="utf-8",
    )
    (target / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")  # provisional
    exported = OnnxEncoder(target, runtime="onnx", verify=False)
    fidelity = check(reference, exported)
    manifest["fidelity"] = fidelity
    manifest["export_s"] = round(time.monotonic() - started, 1)
    refusal = None
    if fidelity["token_ids_differ"]:
        refusal = (
            f"the exported tokenizer gives other token ids than the torch path on "
            f"{fidelity['token_ids_differ']} of {fidelity['probes']} probes "
            f"(first: {fidelity['first_id_diff']!r})"
        )
    elif quantize is None and fidelity["min_cosine"] < MIN_COSINE:
        refusal = (
            f"min cosine {fidelity['min_cosine']:.7f} < {MIN_COSINE} on the probe set ({fidelity['worst']!r})"
        )
    if refusal:
        (target / MANIFEST).unlink()
        raise ExportError(
            f"the export of {model} does not reproduce the torch model: {refusal}; "
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


def save_tokenizer(reference: SentenceTransformerEncoder, source: Path, target: Path) -> None:
    """The tokenizer the torch path runs, serialized from the loaded model (not the source's
    file, which the library may not have followed); the file itself only for a slow tokenizer."""
    backend = getattr(reference.model.tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.save(str(target / TOKENIZER_FILE))
    else:
        shutil.copy(source / TOKENIZER_FILE, target / TOKENIZER_FILE)


def torch_token_ids(reference: SentenceTransformerEncoder, inputs: Sequence[str]) -> list[list[int]]:
    """The token ids sentence-transformers feeds the model for each input (stripped, lowercased
    as the model says, cut to its window), without padding."""
    module: Any = reference.model[0]
    out: list[list[int]] = []
    for i in range(0, len(inputs), CHECK_BATCH):
        features = module.tokenize(list(inputs[i : i + CHECK_BATCH]))
        for ids, mask in zip(
            features["input_ids"].tolist(), features["attention_mask"].tolist(), strict=True
        ):
            out.append([t for t, m in zip(ids, mask, strict=True) if m])
    return out


def check(reference: SentenceTransformerEncoder, exported: OnnxEncoder) -> dict[str, Any]:
    """Both paths on the probe set: token ids compared exactly, vectors by cosine (in batches,
    and the first ``SINGLES`` probes one at a time too)."""
    kinds = [k for k, _ in PROBES]
    texts = [t for _, t in PROBES]
    inputs = [reference.prefixes[k] + t for k, t in PROBES]
    want_ids = torch_token_ids(reference, inputs)
    got_ids = exported.tokens.ids(inputs)
    differ = [i for i, (a, b) in enumerate(zip(want_ids, got_ids, strict=True)) if a != b]
    want = np.vstack(
        [
            reference.encode(texts[i : i + CHECK_BATCH], kinds[i : i + CHECK_BATCH])
            for i in range(0, len(texts), CHECK_BATCH)
        ]
    )
    got = np.vstack(
        [
            exported.encode(texts[i : i + CHECK_BATCH], kinds[i : i + CHECK_BATCH])
            for i in range(0, len(texts), CHECK_BATCH)
        ]
    )
    cosines = _cosines(want, got)
    singles = np.vstack([exported.encode([t], [k]) for k, t in PROBES[:SINGLES]])
    cosines[:SINGLES] = np.minimum(cosines[:SINGLES], _cosines(want[:SINGLES], singles))
    worst = int(np.argmin(cosines))
    return {
        "min_cosine": float(cosines.min()),
        "max_abs_diff": float(max(np.abs(want - got).max(), np.abs(want[:SINGLES] - singles).max())),
        "probes": len(PROBES),
        "token_ids_differ": len(differ),
        "first_id_diff": texts[differ[0]][:60] if differ else None,
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
