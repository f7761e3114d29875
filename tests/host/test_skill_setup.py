"""The skill's set-up lines, as written, on a fresh account: only Debian's python3, no babysit, a home
of its own. They install babysit from the copy the plugin ships (never a package of that name from an
index) into a virtualenv, where `pip install --user` would be refused (PEP 668), and start the daemon."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from babysit.cli.skill import TEMPLATE

pytestmark = pytest.mark.host
ROOT = Path(__file__).resolve().parents[2]


def setup_lines() -> str:
    section = TEMPLATE.read_text().split("## Set-up", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "SKILL.md has no set-up block"
    return block.group(1)


@pytest.mark.timeout(900)
def test_a_fresh_user_follows_the_set_up_lines_and_babysit_answers() -> None:
    plugin = "$HOME/.claude/plugins/cache/babysit/babysit/0.1.0"  # where Claude Code keeps an installed plugin
    script = "\n".join([
        "set -u",
        "export PATH=/usr/bin:/bin PIP_DISABLE_PIP_VERSION_CHECK=1",
        f"export PIP_FIND_LINKS={ROOT}/.wheelhouse",  # babysit's dependencies, as the suite fetched them
        "command -v babysit && exit 90",  # nothing of babysit here yet
        # the plugin's copy of the repository, as Claude Code installs it
        f"mkdir -p {plugin} && tar -C {ROOT} --exclude=.venv --exclude=.wheelhouse --exclude=.git -cf - . "
        f"| tar -C {plugin} -xf -",
        # Claude Code substitutes ${CLAUDE_SKILL_DIR} in a skill's text: the skill's directory in the plugin
        setup_lines().replace("${CLAUDE_SKILL_DIR}", f"{plugin}/babysit/cli/skill"),
        "echo set-up-done",
        "~/.local/bin/babysit ping",
    ])
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "session" / "run.py"), "--timeout", "800", "--",
                           "bash", "-c", script], capture_output=True, text=True, timeout=850)
    assert not [line for line in done.stdout.splitlines() if line.startswith("SETUP FAILED")], done.stdout[-3000:]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].startswith("pong "), done.stdout[-2000:]
    assert "host clean" in done.stderr
