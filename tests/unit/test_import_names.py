"""The folders producer/ and worker/ are installed as ``embedq`` and ``embedq.worker``: no code may
import them under their folder names (one module under two names gives two copies of each class)."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BARE = {"producer", "worker"}


def bare_import_lines(source: str) -> list[int]:
    """Line numbers of the absolute imports of ``producer``/``worker`` in some Python source."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(name.split(".")[0] in BARE for name in names):
            lines.append(node.lineno)
    return sorted(lines)


def test_no_code_imports_the_folder_names() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(listed) > 20  # the listing found the project's files
    offenders = [
        f"{name}:{line}"
        for name in listed
        for line in bare_import_lines((ROOT / name).read_text(encoding="utf-8"))
    ]
    assert offenders == [], f"import embedq / embedq.worker instead: {offenders}"


def test_the_check_sees_a_bare_import() -> None:
    source = "from producer.protocol import Keys\nimport worker.cli\nfrom .worker import x\nimport embedq\n"
    assert bare_import_lines(source) == [1, 2]
