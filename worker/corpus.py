"""Document sets built at run time from a SQuAD-format file (KorQuAD 1.0 dev), for bulk tests and
benchmarks. The data's licence (CC BY-ND) allows no derived copy in the repository: callers write
the documents to a temporary file and delete it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

KORQUAD_FILE = Path("data") / "korquad" / "KorQuAD_v1.0_dev.json"
KORQUAD_PLACES = (
    Path(__file__).resolve().parents[1].parent / "shared" / KORQUAD_FILE,  # beside this checkout
    Path("/work/shared") / KORQUAD_FILE,  # the team's machines
)


def find_korquad() -> Path | None:
    """The KorQuAD dev set: ``EMBEDQ_KORQUAD`` if set, else the shared folder; None if absent."""
    if os.environ.get("EMBEDQ_KORQUAD"):
        return Path(os.environ["EMBEDQ_KORQUAD"])
    return next((p for p in KORQUAD_PLACES if p.is_file()), None)


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
