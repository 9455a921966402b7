"""A bulk job's output directory: the vectors, the ids, the errors, a manifest, and the job state.

    vectors.npy    float32 matrix, one row per document in input order (np.load, mmap_mode="r")
    ids.jsonl      the documents' ids in row order, one JSON value per line
    errors.jsonl   records that could not be embedded: line, id, code, message
    manifest.json  model, dimension, count, prefix, normalized, input checksum, times
    state.json     what a resumed job needs: the input's checksum, the options, chunks done

The matrix is created at its final size and each chunk is written in place and synced before
the state records it done, so a job killed at any point resumes from its last completed chunk.
A lock file keeps two jobs from writing one directory at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..protocol import DTYPE

VECTORS = "vectors.npy"
IDS = "ids.jsonl"
ERRORS = "errors.jsonl"
TRUNCATED = "truncated.jsonl"
MANIFEST = "manifest.json"
STATE = "state.json"
LOCK = ".lock"
STATE_VERSION = 1


class OutputError(RuntimeError):
    """The output directory cannot be used as asked (locked, holds another job's output)."""


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON so that a reader sees the old or the new file, whole."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class VectorFile:
    """A float32 ``.npy`` matrix of known shape, written a block of rows at a time."""

    def __init__(self, path: Path, fd: int, rows: int, dim: int, offset: int) -> None:
        self.path = path
        self.fd = fd
        self.rows = rows
        self.dim = dim
        self.offset = offset

    @classmethod
    def create(cls, path: Path, rows: int, dim: int) -> VectorFile:
        """A new matrix of zeros (sparse on disk until written)."""
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f,
                {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": (rows, dim)},
            )
            offset = f.tell()
            f.truncate(offset + rows * dim * DTYPE.itemsize)
        return cls.open(path, rows, dim)

    @classmethod
    def open(cls, path: Path, rows: int, dim: int) -> VectorFile:
        """An existing matrix, checked to be float32 of shape ``(rows, dim)``."""
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version != (1, 0):
                raise OutputError(f"{path} is not a matrix this job wrote (npy version {version})")
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            offset = f.tell()
        if shape != (rows, dim) or fortran or dtype != DTYPE:
            raise OutputError(
                f"{path} holds a {dtype} matrix of shape {shape}, expected float32 {(rows, dim)}"
            )
        if path.stat().st_size != offset + rows * dim * DTYPE.itemsize:
            raise OutputError(f"{path} has the wrong size for a {rows} x {dim} matrix: it was cut short")
        return cls(path, os.open(path, os.O_RDWR), rows, dim, offset)

    def write(self, start: int, block: np.ndarray) -> None:
        """Rows ``start`` to ``start + len(block)``, on disk (synced) when this returns."""
        data = np.ascontiguousarray(block, dtype=DTYPE)
        if data.ndim != 2 or data.shape[1] != self.dim or start < 0 or start + len(data) > self.rows:
            raise ValueError(f"cannot write {data.shape} at row {start} of {self.rows} x {self.dim}")
        buffer = memoryview(data.tobytes())
        position = self.offset + start * self.dim * DTYPE.itemsize
        while buffer:
            written = os.pwrite(self.fd, buffer, position)
            buffer, position = buffer[written:], position + written
        os.fsync(self.fd)

    def close(self) -> None:
        """Release the file."""
        os.close(self.fd)


class OutputDir:
    """The files of one bulk job's output, under one directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        """A file in the directory."""
        return self.path / name

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock (created with the directory); a clear error if another
        process holds it. The lock goes with the process, so a killed job leaves none behind."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                raise OutputError(
                    f"{self.path} is being written by {holder}; wait for that job or choose another output"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def load_state(self) -> dict[str, Any] | None:
        """The saved job state, or None for a fresh directory."""
        path = self.file(STATE)
        if not path.exists():
            return None
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("version") != STATE_VERSION:
            raise OutputError(f"{path} was written by another version of embedq: use a new output directory")
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        """Record the job state (atomically)."""
        write_json_atomic(self.file(STATE), {**state, "version": STATE_VERSION})

    def clear(self) -> None:
        """Remove the files of an earlier job (``--overwrite``)."""
        for name in (VECTORS, IDS, ERRORS, MANIFEST, STATE):
            self.file(name).unlink(missing_ok=True)

    def vectors(self, rows: int, dim: int) -> VectorFile:
        """The matrix: opened when it exists, else created."""
        path = self.file(VECTORS)
        if path.exists():
            return VectorFile.open(path, rows, dim)
        return VectorFile.create(path, rows, dim)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """The manifest, written last: its presence means the output is complete."""
        write_json_atomic(self.file(MANIFEST), manifest)

    def checksums(self, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """Size and SHA-256 of each named file, recorded when the job completes."""
        out = {}
        for name in names:
            digest = hashlib.sha256()
            with open(self.file(name), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            out[name] = {"bytes": self.file(name).stat().st_size, "sha256": digest.hexdigest()}
        return out

    def verify(self, recorded: dict[str, dict[str, Any]], rows: int, dim: int) -> None:
        """``OutputError`` unless the output of a completed job is still whole: every file there,
        the matrix of its shape and size, and each file's checksum recorded at completion
        unchanged (outputs of embedq versions before the checksums get the shape check only)."""
        for name in (VECTORS, IDS, *recorded):
            if not self.file(name).exists():
                raise OutputError(
                    f"{self.file(name)} is gone since the job completed: the output is not complete; "
                    "--overwrite embeds the input again"
                )
        VectorFile.open(self.file(VECTORS), rows, dim).close()  # shape and size, or OutputError
        for name, want in recorded.items():
            path = self.file(name)
            if self.checksums((name,))[name] != want:
                raise OutputError(
                    f"{path} changed since the job completed ({path.stat().st_size} bytes, recorded "
                    f"{want['bytes']}, sha256 {want['sha256'][:12]}...): --overwrite embeds the input again"
                )
