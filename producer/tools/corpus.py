"""Document sets built at run time from a SQuAD-format file (KorQuAD 1.0 dev), for bulk tests and
benchmarks. The data's licence (CC BY-ND) allows no derived copy in the repository: callers write
the documents to a temporary file and delete it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from embedq import defaults
from embedq.defaults import setting

KORQUAD_NAME = "KorQuAD_v1.0_dev.json"
KORQUAD_DEFAULT = Path(defaults.KORQUAD)
"""Where the data is looked for when ``EMBEDQ_KORQUAD`` is not set: the team's shared folder
beside the checkout, relative to the working directory (the checkout's root)."""


def find_korquad(where: str | Path | None = None) -> Path | None:
    """The KorQuAD dev set: ``where`` (a file or the folder holding it), else ``EMBEDQ_KORQUAD``,
    else ``../shared/data/korquad``; None if it is not there."""
    place = Path(where or setting("korquad"))
    path = place / KORQUAD_NAME if place.is_dir() else place
    return path if path.is_file() else None


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def korquad_documents(path: str | Path) -> Iterator[dict[str, str]]:
    """Every question and every sentence of every paragraph, as ``{"id", "text"}`` records, in
    file order: what a vector store of short passages and FAQ entries would hold. About 5,800
    questions and 6,600 sentences for the dev set; ids are ``q<n>`` and ``s<n>``."""
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    q = s = 0
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for sentence in _SENTENCE_END.split(paragraph["context"]):
                if sentence.strip():
                    yield {"id": f"s{s}", "text": sentence.strip()}
                    s += 1
            for qa in paragraph["qas"]:
                yield {"id": f"q{q}", "text": qa["question"]}
                q += 1


def korquad_pairs(path: str | Path) -> Iterator[tuple[str, str]]:
    """(question, its paragraph) for every question, in file order: the chatbot's questions and
    the documents of its store (the paragraphs run to a few hundred tokens)."""
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                yield qa["question"], paragraph["context"]


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]], limit: int) -> int:
    """Write up to ``limit`` records as JSONL; returns how many were written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            if n >= limit:
                break
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n
