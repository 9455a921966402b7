"""Offline bulk embedding: a whole document set into an output directory, through the workers'
low-priority bulk list, as an RQ job (``embedq bulk submit``) or in the foreground
(``embedq bulk run``). Needs the ``bulk`` extra (rq, tqdm); no torch."""

from .job import run_bulk
from .options import BulkError, BulkOptions, Progress
from .output import OutputError
from .reader import BadDocument, BulkInputError, Document, DocumentReader, InputSpec

__all__ = [
    "BadDocument",
    "BulkError",
    "BulkInputError",
    "BulkOptions",
    "Document",
    "DocumentReader",
    "InputSpec",
    "OutputError",
    "Progress",
    "run_bulk",
]
