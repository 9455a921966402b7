"""Reading a document set as a stream: JSONL or CSV (optionally gzipped), one document at a time.

Each record becomes a ``Document`` or, when it cannot be embedded, a ``BadDocument`` saying why,
with its line number, so a job can list bad records and go on. The raw bytes are hashed while
they are read: the checksum that tells a resumed job its input has not changed costs no extra
pass. Memory stays at one record whatever the input's size.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..protocol import is_blank

FORMATS = ("jsonl", "csv", "tsv")
CSV_FIELD_LIMIT = 64 * 1024 * 1024
"""Largest CSV field read; longer texts are refused by the text limit long before this."""


class BulkInputError(ValueError):
    """The input as a whole cannot be read (unknown format, missing column, bad encoding), or a
    bad record under ``fail_fast``."""


@dataclass(frozen=True)
class Document:
    """One record to embed: its id (a string, or an integer from JSON) and its text."""

    line: int
    id: str | int
    text: str


@dataclass(frozen=True)
class BadDocument:
    """One record that cannot be embedded, with a code and a message a person can act on."""

    line: int
    id: Any
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        """The errors-file entry."""
        shown = self.id if isinstance(self.id, (str, int)) and not isinstance(self.id, bool) else None
        return {"line": self.line, "id": shown, "code": self.code, "message": self.message}


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """How to read an input: its format and which fields hold the id and the text."""

    format: str | None = None
    """``jsonl``, ``csv`` or ``tsv``; None: from the file name (``.jsonl``/``.ndjson``/``.csv``/
    ``.tsv``, optionally followed by ``.gz``)."""
    id_field: str = "id"
    text_field: str = "text"
    max_chars: int = 8192
    """Longest text accepted (the workers' EMBED_MAX_TEXT_CHARS); longer ones are bad documents."""

    def resolve_format(self, path: Path) -> str:
        """The format to read ``path`` with; a clear error when it cannot be told."""
        if self.format is not None:
            if self.format not in FORMATS:
                raise BulkInputError(f"unknown input format {self.format!r}: choose one of {FORMATS}")
            return self.format
        name = path.name.lower().removesuffix(".gz")
        for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv"), (".tsv", "tsv")):
            if name.endswith(suffix):
                return fmt
        raise BulkInputError(
            f"cannot tell the format of {path.name!r} from its name: use --format jsonl, csv or tsv"
        )


class _Hashing(io.RawIOBase):
    """A read-only byte stream that feeds what passes through it to a sha256."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.sha256.update(memoryview(buffer)[:n])
            self.size += n
        return n or 0


class DocumentReader:
    """Iterates over the documents of one input file, hashing its bytes on the way.

    After a complete iteration, ``sha256`` and ``size`` describe the file's raw bytes.
    """

    def __init__(self, path: str | Path, spec: InputSpec) -> None:
        self.path = Path(path)
        self.spec = spec
        self.format = spec.resolve_format(self.path)
        if not self.path.is_file():
            raise BulkInputError(f"input {str(self.path)!r} does not exist or is not a file")
        self._hashing: _Hashing | None = None

    @property
    def sha256(self) -> str:
        """Hex digest of the bytes read so far (all of them after a full pass)."""
        assert self._hashing is not None, "read the input first"
        return self._hashing.sha256.hexdigest()

    @property
    def size(self) -> int:
        """Bytes read so far."""
        return self._hashing.size if self._hashing is not None else 0

    def __iter__(self) -> Iterator[Document | BadDocument]:
        with open(self.path, "rb") as raw:
            self._hashing = _Hashing(raw)
            buffered = io.BufferedReader(self._hashing, buffer_size=1 << 20)
            stream: IO[bytes] = buffered
            if self.path.name.lower().endswith(".gz"):
                stream = gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[assignment]
            if self.format == "jsonl":
                yield from self._jsonl(stream)
            else:
                yield from self._csv(stream, "\t" if self.format == "tsv" else ",")
            while buffered.read(1 << 20):  # hash what a parser left unread (trailing bytes)
                pass

    def _jsonl(self, stream: IO[bytes]) -> Iterator[Document | BadDocument]:
        for number, raw_line in enumerate(stream, start=1):
            if number == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
                raw_line = raw_line[3:]
            if not raw_line.strip():
                continue  # blank lines (a trailing newline, a separator) are not records
            try:
                obj = json.loads(raw_line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield BadDocument(number, None, "invalid_utf8", f"line is not UTF-8: {exc}")
                continue
            except json.JSONDecodeError as exc:
                yield BadDocument(number, None, "invalid_json", f"line is not JSON: {exc}")
                continue
            if not isinstance(obj, dict):
                yield BadDocument(
                    number, None, "invalid_document", f"line is a JSON {type(obj).__name__}, not an object"
                )
                continue
            yield self.check(number, obj.get(self.spec.id_field), obj.get(self.spec.text_field), obj)

    def _csv(self, stream: IO[bytes], delimiter: str) -> Iterator[Document | BadDocument]:
        csv.field_size_limit(CSV_FIELD_LIMIT)
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                return
            columns = {name: i for i, name in reversed(list(enumerate(header)))}
            for field in (self.spec.id_field, self.spec.text_field):
                if field not in columns:
                    raise BulkInputError(
                        f"the header of {self.path.name!r} has no column {field!r} (columns: {header}); "
                        "name the columns with --id-field and --text-field"
                    )
            id_col, text_col = columns[self.spec.id_field], columns[self.spec.text_field]
            previous_end = reader.line_num
            for row in reader:
                start, previous_end = previous_end + 1, reader.line_num
                if not row:
                    continue
                doc_id = row[id_col] if id_col < len(row) else None
                doc_text = row[text_col] if text_col < len(row) else None
                yield self.check(start, doc_id if doc_id != "" else None, doc_text, {})
        except UnicodeDecodeError as exc:
            raise BulkInputError(
                f"{self.path.name!r} is not UTF-8 after line {reader.line_num}: {exc}"
            ) from None
        except csv.Error as exc:
            raise BulkInputError(f"{self.path.name!r} line {reader.line_num}: {exc}") from None
        finally:
            text.detach()  # leave the byte stream open for the caller

    def check(self, line: int, doc_id: Any, text: Any, record: dict[str, Any]) -> Document | BadDocument:
        """A document, or why this record is not one (missing/invalid id or text, too long)."""
        spec = self.spec
        if doc_id is None or doc_id == "":
            where = "" if not record else f" (fields: {sorted(record)[:10]})"
            return BadDocument(line, None, "missing_id", f"no id in field {spec.id_field!r}{where}")
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            return BadDocument(
                line, None, "invalid_id", f"id must be a string or an integer, got {type(doc_id).__name__}"
            )
        if text is None:
            return BadDocument(line, doc_id, "missing_text", f"no text in field {spec.text_field!r}")
        if not isinstance(text, str):
            return BadDocument(line, doc_id, "invalid_text", f"text is {type(text).__name__}, not a string")
        if is_blank(text):
            return BadDocument(
                line, doc_id, "empty_text", "text is empty or only whitespace or invisible characters"
            )
        if len(text) > spec.max_chars:
            return BadDocument(
                line,
                doc_id,
                "text_too_long",
                f"text has {len(text)} characters; the limit is {spec.max_chars} (EMBED_MAX_TEXT_CHARS): "
                "split it into chunks",
            )
        return Document(line, doc_id, text)
