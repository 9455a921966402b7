"""How a bulk job cuts a document set into work: chunks of rows, and bulk requests within a chunk.

Pure functions, no Redis. A chunk is a run of consecutive output rows and the unit of resuming.
Within a chunk, texts are ordered longest first (as sentence-transformers does inside one encode
call) and packed into requests of at most ``max_texts`` texts and ``max_chars`` characters, so a
batch pads little and no batch is much slower than another: an online request waits behind at
most one of them. The plan depends only on the texts, so a rerun forms the same batches and
gets bit-identical vectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Chunk(Generic[T]):
    """Rows ``start`` to ``start + len(items)`` of the output."""

    index: int
    start: int
    items: list[T]


def chunked(items: Iterable[T], size: int) -> Iterator[Chunk[T]]:
    """Consecutive chunks of ``size`` items (the last may be shorter), numbered from 0."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    batch: list[T] = []
    index = start = 0
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield Chunk(index, start, batch)
            index, start, batch = index + 1, start + size, []
    if batch:
        yield Chunk(index, start, batch)


def chunk_count(rows: int, size: int) -> int:
    """How many chunks ``rows`` rows make."""
    return -(-rows // size)


def pack(texts: Sequence[str], *, max_texts: int, max_chars: int) -> list[list[int]]:
    """Positions of ``texts`` grouped into requests, longest texts first.

    A request holds at most ``max_texts`` texts and ``max_chars`` characters in all, except that
    a text longer than ``max_chars`` goes alone.
    """
    if max_texts < 1 or max_chars < 1:
        raise ValueError(f"max_texts and max_chars must be at least 1, got {max_texts}, {max_chars}")
    order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
    groups: list[list[int]] = []
    current: list[int] = []
    chars = 0
    for i in order:
        n = len(texts[i])
        if current and (len(current) >= max_texts or chars + n > max_chars):
            groups.append(current)
            current, chars = [], 0
        current.append(i)
        chars += n
    if current:
        groups.append(current)
    return groups
