"""The CLI's surface without a daemon: help, version, usage errors, and installing the skill."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from babysit import __version__
from babysit.cli.commands import app

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


def test_skill_install_says_where_each_file_went_and_installing_twice_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "project" / ".claude" / "skills" / "babysit"
    skill, hook = target / "SKILL.md", target / "no-sleep-babysit.sh"
    first = CliRunner().invoke(app, ["skill", "install", f"--dir={target}"])
    assert first.exit_code == 0, first.output
    installed = skill.read_bytes(), hook.read_bytes()
    second = CliRunner().invoke(app, ["skill", "install", f"--dir={target}"])
    assert second.exit_code == 0, second.output
    assert (skill.read_bytes(), hook.read_bytes()) == installed

    for result, verb in ((first, "installed"), (second, "unchanged")):
        lines = result.output.splitlines()
        assert lines[:2] == [f"{verb} {skill}", f"{verb} {hook}"]
        assert f"Claude Code loads it as the skill 'babysit' in the project {tmp_path / 'project'}" in lines[2]
        assert lines[3] == f'Hook (PreToolUse, matcher Bash|Monitor) in SKILL.md\'s frontmatter: command: "{hook}"'
        assert "does not expand ${CLAUDE_SKILL_DIR} in hook commands" in lines[4]

    assert os.access(hook, os.X_OK)
    front = skill.read_text().split("---")[1]
    for key in ("name: babysit", "description:", "allowed-tools:", "PreToolUse:", f'command: "{hook}"'):
        assert key in front
    payload = {"tool_name": "Bash", "tool_input": {"command": "sleep 60 && babysit log --name=x"}}
    blocked = subprocess.run([str(hook)], input=json.dumps(payload), capture_output=True, text=True, timeout=5)
    assert blocked.returncode == 2 and "babysit wait --name=x" in blocked.stderr


def test_skill_install_by_default_serves_claude_code_and_the_other_agents_and_never_clobbers(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    done = CliRunner().invoke(app, ["skill", "install"], env=home)
    assert done.exit_code == 0, done.output
    assert (tmp_path / ".claude/skills/babysit/SKILL.md").exists() and (tmp_path / ".agents/skills/babysit/SKILL.md").exists()
    assert "Codex CLI, Gemini CLI, GitHub Copilot, Cursor and opencode load it from" in done.output
    theirs = tmp_path / "proj/.agents/skills/babysit/SKILL.md"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("---\nname: babysit\ndescription: someone else's\n---\n")
    refused = CliRunner().invoke(app, ["skill", "install", f"--project={tmp_path / 'proj'}"], env=home)
    assert refused.exit_code == 1 and f"a different skill is already at {theirs}" in refused.output
    assert not (tmp_path / "proj/.claude").exists()


def test_skill_install_quotes_a_hook_path_with_spaces_for_the_shell(tmp_path: Path) -> None:
    target = tmp_path / "my projects" / ".claude" / "skills" / "babysit"
    assert CliRunner().invoke(app, ["skill", "install", f"--dir={target}"]).exit_code == 0
    command = f"'{target / 'no-sleep-babysit.sh'}'"  # one shell word: Claude Code runs hook commands in a shell
    assert f'command: "{command}"' in (target / "SKILL.md").read_text()
    payload = {"tool_name": "Bash", "tool_input": {"command": "sleep 5; babysit status --name=x"}}
    blocked = subprocess.run(["bash", "-c", command], input=json.dumps(payload), capture_output=True, text=True,
                             timeout=5)
    assert blocked.returncode == 2


def test_text_from_tasks_is_printable_and_never_markup() -> None:
    from babysit.cli.shown import literal, printable

    assert printable("a\x1b]0;pwned\x07b\tc\r\nd\re\x9bf") == "a\\x1b]0;pwned\\x07b\tc\nd\\x0de\\x9bf"
    assert literal("[/] [bold]x[/bold]").plain == "[/] [bold]x[/bold]"
