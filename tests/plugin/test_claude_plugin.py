"""The repository as a Claude Code plugin and marketplace, checked by Claude Code's own CLI (offline): it
validates strictly, a marketplace added from it installs the plugin, and the plugin shows its skill and its
always-on hook. Run on a copy of what git tracks, as a user's clone would be."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from babysit import __version__

pytestmark = [pytest.mark.plugin]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files (and those added but not yet committed), without .venv and other build output."""
    copy = tmp_path_factory.mktemp("checkout") / "babysit"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        source, target = ROOT / name.decode(), copy / name.decode()
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode & 0o777)
    return copy


@pytest.fixture(scope="module")
def claude(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Claude Code's CLI with a home of its own (its settings and plugin cache)."""
    home = tmp_path_factory.mktemp("claude-home")
    yield ["env", f"HOME={home}", "DISABLE_AUTOUPDATER=1", os.environ["BABYSIT_CLAUDE"]]


def run(claude: list[str], *args: str) -> str:
    done = subprocess.run([*claude, *args], capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_the_repository_validates_strictly_as_a_marketplace_and_a_plugin(claude: list[str], checkout: Path) -> None:
    assert "Validation passed" in run(claude, "plugin", "validate", "--strict", str(checkout))
    assert "Validation passed" in run(claude, "plugin", "validate", "--strict",
                                      str(checkout / ".claude-plugin" / "plugin.json"))


def test_a_user_adds_the_marketplace_installs_the_plugin_and_sees_its_skill_and_hook(claude: list[str],
                                                                                     checkout: Path) -> None:
    assert "Successfully added marketplace: babysit" in run(claude, "plugin", "marketplace", "add", str(checkout))
    assert "Successfully installed plugin: babysit@babysit" in run(claude, "plugin", "install", "babysit@babysit")
    details = run(claude, "plugin", "details", "babysit@babysit")
    assert f"babysit {__version__}" in details
    assert "Skills (1)  babysit" in details and "Hooks (1)  PreToolUse" in details, details
