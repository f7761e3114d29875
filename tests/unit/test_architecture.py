"""The architecture as a contract: the layers (import-linter, pyproject's [tool.importlinter]), the types
(mypy, pyproject's [tool.mypy]), and classes small enough to read in one sitting."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MAX_CLASS_LINES = 250
MAX_CLASS_METHODS = 25


def test_the_layers_hold() -> None:
    """Core imports nothing above it; executors no daemon; the CLI neither daemon nor executor."""
    found = subprocess.run([BIN / "lint-imports", "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert found.returncode == 0 and "0 broken" in found.stdout, found.stdout + found.stderr


def test_the_types_check(tmp_path: Path) -> None:
    found = subprocess.run([BIN / "mypy", "--cache-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert found.returncode == 0 and found.stdout.startswith("Success"), found.stdout + found.stderr


def classes() -> list[tuple[str, ast.ClassDef]]:
    found = []
    for path in sorted((ROOT / "babysit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                found.append((f"{path.relative_to(ROOT)}:{node.name}", node))
    return found


@pytest.mark.parametrize(("where", "node"), classes(), ids=[where for where, _ in classes()])
def test_no_class_outgrows_one_sitting(where: str, node: ast.ClassDef) -> None:
    lines = (node.end_lineno or node.lineno) - node.lineno + 1
    methods = [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    assert lines <= MAX_CLASS_LINES and len(methods) <= MAX_CLASS_METHODS, f"{lines} lines, {len(methods)} methods"
