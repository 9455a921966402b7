"""Comparing vectors with the reference model: the helpers every fidelity test uses."""

from __future__ import annotations

import numpy as np

from embedq.tools.record import RECORD_LONG_TEXT, RECORD_QUERIES
from embedq.tools.reference import ReferenceModel

E5_PREFIXES = {"query": "query: ", "passage": "passage: "}
"""How multilingual-e5-large's workers are set up (its model card's prefixes)."""

__all__ = ["E5_PREFIXES", "RECORD_LONG_TEXT", "RECORD_QUERIES", "ReferenceModel", "cosines"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
