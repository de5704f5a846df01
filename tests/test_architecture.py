"""The layout rules that import-linter cannot express: no module imports another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _private_imports(path: Path) -> list[str]:
    """`from protege.x import _name` (and `import protege.x._y`-style name use) in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("protege"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: from {node.module} import {alias.name}")
    return found


def _is_test_of(test: Path, module: str) -> bool:
    """tests/test_train.py may use protege.train's private names (a test of that module itself)."""
    stem = test.stem.removeprefix("test_")
    return stem in module.split(".")


def test_no_module_imports_a_private_name_of_another() -> None:
    bad = []
    for folder in ("src", "benchmarks", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            for line in _private_imports(path):
                module = line.split(" from ")[1].split(" import ")[0]
                if folder == "tests" and _is_test_of(path, module):
                    continue
                bad.append(line)
    assert bad == [], "private names imported across modules:\n" + "\n".join(bad)


def test_the_checker_sees_a_private_import(tmp_path: Path) -> None:
    f = REPO / "tests" / "_probe_private_import.py"
    try:
        f.write_text("from protege.train.stage import _load_data\n")
        assert _private_imports(f) == ["tests/_probe_private_import.py:1: from protege.train.stage import _load_data"]
    finally:
        f.unlink()
