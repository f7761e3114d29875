"""The CLI's surface without a daemon: help, version, usage errors, and installing the skill."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from babysit import __version__
from babysit.cli import app

COMMANDS = [["run"], ["wait"], ["wait_for_capacity"], ["log"], ["list"], ["status"], ["kill"], ["adjust"], ["ping"],
            ["daemon-start"], ["skill", "install"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_version() -> None:
    assert CliRunner().invoke(app, ["--version"]).output.strip() == f"babysit {__version__}"


def test_underscore_and_hyphen_spellings() -> None:
    for flag in ("--estimated_mem_bytes", "--estimated-mem-bytes", "--kill_timeout", "--kill-timeout"):
        assert flag in CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "300"}).output


def test_a_usage_error_exits_2() -> None:
    assert CliRunner().invoke(app, ["run", "--name=x"]).exit_code == 2  # no --command


def test_skill_install(tmp_path: Path) -> None:
    target = tmp_path / "skills" / "babysit"
    result = CliRunner().invoke(app, ["skill", "install", f"--dir={target}"])
    assert result.exit_code == 0, result.output
    skill, hook = target / "SKILL.md", target / "no-sleep-babysit.sh"
    assert os.access(hook, os.X_OK)
    front = skill.read_text().split("---")[1]
    for key in ("name: babysit", "description:", "allowed-tools:", "PreToolUse:", f'command: "{hook}"'):
        assert key in front
    payload = {"tool_name": "Bash", "tool_input": {"command": "sleep 60 && babysit log --name=x"}}
    blocked = subprocess.run([str(hook)], input=json.dumps(payload), capture_output=True, text=True, timeout=5)
    assert blocked.returncode == 2 and "babysit wait --name=x" in blocked.stderr
