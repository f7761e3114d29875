"""Undefined names and unused imports fail fast here, not as a D-Bus error at run time."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pyflakes_is_clean() -> None:
    found = subprocess.run([sys.executable, "-m", "pyflakes", "babysit", "tests"], cwd=ROOT, capture_output=True,
                           text=True)
    assert found.stdout == "" and found.returncode == 0, found.stdout
