"""A new user follows only the README's quick start, in a fresh private session."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host
ROOT = Path(__file__).resolve().parents[2]


def quickstart() -> list[str]:
    """The shell lines between the README's quickstart markers, comments dropped."""
    block = re.search(r"<!-- quickstart -->\s*```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md has no quickstart block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_quick_start_works_in_a_fresh_session() -> None:
    steps = quickstart()
    assert steps[0].startswith("pip install .")
    script = "\n".join([
        "set -euo pipefail",
        "python3 -m venv ~/venv && . ~/venv/bin/activate",
        # a copy the user owns, as after `git clone`
        f"tar -C {ROOT} --exclude=.venv --exclude=.wheelhouse --exclude=.git -cf - . | (mkdir ~/babysit && tar -C ~/babysit -xf -)",
        "cd ~/babysit",
        *steps,
    ])
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "session" / "run.py"), "--timeout", "600", "--",
                           "bash", "-c", script], capture_output=True, text=True, timeout=700)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "queued: hello" in done.stdout
    assert '"status": "completed"' in done.stdout
    assert done.stdout.rstrip().splitlines()[-2:] == ["hi", "bye"]
    assert "host clean" in done.stderr
