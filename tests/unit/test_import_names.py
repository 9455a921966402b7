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


def module_imports(path: Path, module: str) -> set[str]:
    """The embedq modules ``module`` (at ``path``) imports, at the top or inside a function (a
    deferred import that closes a cycle hides the cycle, it does not remove it)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == "embedq"}


def embedq_modules() -> dict[str, Path]:
    out = {}
    for folder, package in ((ROOT / "producer", "embedq"), (ROOT / "worker", "embedq.worker")):
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "embedq" and parts and parts[0] == "worker":
                continue
            out[".".join([package, *parts])] = path
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` (module -> modules it imports at load), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    modules = embedq_modules()
    assert "embedq.bulk.job" in modules and "embedq.worker.loop" in modules
    graph = {
        name: {m for m in module_imports(path, name) if m in modules and m != name}
        for name, path in modules.items()
    }
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"
    # the cycle this check was written for: the bulk job and its RQ submission
    assert "embedq.bulk.rq_jobs" not in graph["embedq.bulk.job"]


def test_the_cycle_check_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
