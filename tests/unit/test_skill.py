"""SKILL.md is the only document a coding agent gets: every part of the guidance is in it, its set-up
lines say when they fail, and every `babysit <verb> --flag` it shows exists in the CLI."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from babysit.cli.commands import app
from babysit.cli.skill import (
    HOOK_NAME, MARKER, TEMPLATE, Occupied, Target, install, skill_text, targets, where_claude_looks,
)
from babysit.core.protocol import KillReason

TEXT = TEMPLATE.read_text()


def section(title: str) -> str:
    """The text under the `## title` heading, up to the next `## ` heading."""
    found = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", TEXT, re.M | re.S)
    assert found, f"SKILL.md has no section '## {title}'"
    return found.group(1)


def flat(text: str) -> str:
    """Lower case, every run of white space one space: a phrase may wrap across lines."""
    return re.sub(r"\s+", " ", text).lower()


def assert_says(text: str, *phrases: str) -> None:
    missing = [p for p in phrases if flat(p) not in flat(text)]
    assert not missing, f"SKILL.md does not say: {missing}"


def assert_in_order(text: str, *phrases: str) -> None:
    at = [flat(text).find(flat(p)) for p in phrases]
    assert -1 not in at and at == sorted(at), f"expected in this order: {phrases} (found at {at})"


# --- the parts of the guidance -------------------------------------------------------------------------


def frontmatter(text: str) -> dict[str, str]:
    """The top-level keys of a SKILL.md's frontmatter, with their (first-line) values."""
    front = text.split("---")[1]
    return dict(line.split(":", 1) for line in front.splitlines() if line and not line.startswith(" "))


def test_frontmatter_is_the_open_agent_skills_format() -> None:
    """Read by Codex CLI, Gemini CLI, Copilot, Cursor, opencode and Claude Code alike: no Claude-only key."""
    keys = frontmatter(TEXT)
    assert set(keys) == {"name", "description", "allowed-tools"}
    assert keys["name"].strip() == "babysit"
    description = keys["description"].strip()
    # a plain YAML scalar: no ": " or " #" inside, and within the format's 1024 characters
    assert ": " not in description and " #" not in description and len(description) <= 1024


def test_only_verbs_that_run_nothing_new_are_pre_approved() -> None:
    """Seen in review: Bash(babysit:*) let a prompt-injected `babysit run --command '…'` through unasked."""
    allowed = {tool.strip() for tool in frontmatter(TEXT)["allowed-tools"].split(", ")}
    assert allowed == {f"Bash(babysit {verb}:*)" for verb in ("wait", "status", "log", "list", "ping", "history",
                                                              "estimate")} | {"Bash(journalctl --user -u babysit-*)"}


def test_claude_codes_copy_declares_the_hook_for_bash_and_monitor(tmp_path: Path) -> None:
    text = skill_text(tmp_path / "it's here" / HOOK_NAME)
    assert set(frontmatter(text)) == {"name", "description", "allowed-tools", "hooks"}
    front = text.split("---")[1]
    assert '    - matcher: "Bash|Monitor"' in front and "          timeout: 5" in front
    command = re.search(r"command: (.*)", front).group(1)
    assert shlex.split(json.loads(command)) == [str(tmp_path / "it's here" / HOOK_NAME)]
    assert text.split("---", 2)[2] == TEXT.split("---", 2)[2]  # the same guidance


def test_says_when_to_use_babysit_and_when_not() -> None:
    text = section("When to use babysit, and when not")
    assert_says(text, "non-interactive work that runs longer than about 2 minutes", "compute-heavy work",
                "must outlive your session")
    assert_says(text, "Do not use babysit for", "short tasks", "interactive commands", "use tmux",
                "IO-bound polling loops", "light tasks that may die with your session")


def test_heavy_work_never_dodges_the_queue_nor_inflates_estimates() -> None:
    text = section("The hard rule: heavy work goes through babysit")
    assert_says(text, "Every heavy command goes through `babysit run`", "Never dodge the queue", "`&`", "`nohup`",
                "your agent tool's own background mode", "run_in_background")
    assert_says(text, "Never inflate estimates to pass admission", "starves other tasks")


def test_estimates_come_from_a_small_smoke_test() -> None:
    text = section("Estimate from a smoke test")
    assert_says(text, "Smoke-test small first", "extrapolating the smoke test", "Never over-estimate without a clue",
                "peak_mem_bytes", "cpu_seconds")


def test_a_hit_cap_means_audit_and_rerun_before_raising_the_limit() -> None:
    text = section("When a cap is hit")
    assert_says(text, "The first reflex is not to raise the limit", "profile", "drop intermediates",
                "rolling or partial reads", "subsample", "smaller batch size", "n_jobs")
    assert_in_order(text, "Audit", "Re-run the optimised version", "raise the estimates",
                    "babysit wait_for_capacity")


def test_observability_contract_asks_for_real_progress_not_keep_alives() -> None:
    text = section("Observability")
    assert_says(text, "at least one line per observability interval", "`[3/42] ETA ~3m loss=1.2e-4`",
                "No keep-alives", "observability_stall")


def test_wait_runs_in_the_background_exactly_once_and_says_what_arrives() -> None:
    text = section("Run, then wait once, in the background")
    assert_says(text, "`babysit wait --name=train-1` in the background", "exactly once per task")
    assert_says(text, "on stderr", "`runaway_risk` events, one JSON line", "on stdout", "terminal JSON object")
    assert_says(text, "0 `completed`", "1 `failed`, `killed` or `unknown`", "2 refused or bad usage")


@pytest.mark.parametrize("phrases", [
    ("Exit 0 is not success when an inner runner swallows errors", "expected output files exist"),
    ("No nested `bash -c` inside `--command`", "it already runs as `bash -c`"),
    ("`uv run -u` is rejected", "`PYTHONUNBUFFERED=1 uv run python …`", "`uv run python -u …`"),
    ("babysit line-buffers C stdio output by default", "coreutils' stdbuf", "LightGBM and XGBoost",
     "not mistaken for stalls", "`--buffering=default` turns this off", "cannot change Python's own buffering",
     "set their own buffers", "statically linked"),
    ("`daemon not running`: run `babysit daemon-start`",),
    ("`loginctl enable-linger $USER`",),
    ("unique among live (queued or running) tasks",),
], ids=["exit-0", "nested-bash", "uv-run-u", "native-output", "daemon", "linger", "names"])
def test_pitfalls(phrases: tuple[str, ...]) -> None:
    assert_says(section("Pitfalls"), *phrases)


def test_buffering_flag_is_described_with_both_values() -> None:
    text = section("Commands and flags")
    assert_says(text, "[--buffering=line]", "`--buffering` takes `line` (the default", "or `default`")


def test_example_conversation_runs_waits_in_the_background_gets_notified_then_reads_the_log() -> None:
    text = section("Example conversation")
    assert_in_order(text, "babysit run --name=train-full", "in the background):  babysit wait --name=train-full",
                    "notification:", "babysit log --name=train-full")


def test_setup_installs_the_cli_and_starts_the_daemon() -> None:
    text = section("Set-up")
    assert_says(text, "command -v babysit", "python3 -m venv ~/.local/share/babysit/venv",
                '"${CLAUDE_SKILL_DIR}/../../.."', "could not be installed", "babysit ping || babysit daemon-start",
                "could not be started")
    commands = setup_lines()
    assert "pip install --user" not in commands and "pip install babysit" not in commands  # never a stranger's package


def test_reference_parts_are_kept() -> None:
    table = section("What kills a task")
    assert all(f"`{reason}`" in table for reason in KillReason)
    assert_says(section("Formats"), '"kill_reason"', '"kill_hint"', '"log_cmd"', "capacity_exceeded", "--force")
    assert_says(section("Commands and flags"), "Durations:", "Sizes:", "Exit codes of every command: 0 success; 1",
                "2 bad usage or a refused request", "exceeds_cap")


# --- the set-up lines, run against stand-in commands ---------------------------------------------------


def setup_lines() -> str:
    return re.search(r"```sh\n(.*?)```", section("Set-up"), re.S).group(1)


def run_setup(tmp_path: Path, stubs: dict[str, str], skill_dir: str = "/nonexistent") -> str:
    """Run the set-up block with only the given stand-in programs on PATH (and ${CLAUDE_SKILL_DIR} as Claude
    Code substitutes it); returns stdout and stderr."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    lines = setup_lines().replace("${CLAUDE_SKILL_DIR}", skill_dir)
    done = subprocess.run(["/bin/bash", "-c", lines], env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=10)
    return done.stdout + done.stderr


def test_setup_says_plainly_when_the_cli_cannot_be_installed(tmp_path: Path) -> None:
    said = run_setup(tmp_path, {"python3": "exit 1"}, skill_dir=str(TEMPLATE.parent))  # no venv module, say
    assert "SETUP FAILED: babysit is not installed, and the copy this skill ships could not be installed" in said
    assert "the babysit daemon is not running and could not be started" in said


def test_setup_says_plainly_when_the_daemon_cannot_be_started(tmp_path: Path) -> None:
    said = run_setup(tmp_path, {"babysit": 'echo "babysit $1"; exit 1'})
    assert "babysit ping" in said and "babysit daemon-start" in said
    assert "SETUP FAILED: the babysit daemon is not running and could not be started" in said
    assert "could not be installed" not in said


def test_setup_is_silent_when_all_is_there(tmp_path: Path) -> None:
    said = run_setup(tmp_path, {"babysit": 'echo "pong 0.1.0"'})
    assert said == "pong 0.1.0\n"


# --- every command shown exists in the CLI -------------------------------------------------------------

GROUPS = {"skill"}  # verbs whose next word is a subcommand


def code_lines(markdown: str) -> list[str]:
    """Lines of fenced code blocks (continuations joined) and the inline code spans outside them."""
    fences = re.compile(r"```[^\n]*\n(.*?)```", re.S)
    lines = [line for block in fences.findall(markdown) for line in block.replace("\\\n", " ").splitlines()]
    return lines + re.findall(r"`([^`\n]+)`", fences.sub("", markdown))


def shown_commands(markdown: str) -> list[tuple[tuple[str, ...], set[str]]]:
    """Each `babysit <verb> [--flag…]` in code: its verb path and the flags given to it.

    A quoted string (e.g. a `--command='…'` value, or JSON) is one shell word, so text inside it is not read as
    babysit's flags; a command ends at `;`, `&&`, `|` and the like.
    """
    found = []
    for line in code_lines(markdown):
        if not re.search(r"\bbabysit\s+[a-z]", line):
            continue
        try:
            words = list(shlex.shlex(line, posix=True, punctuation_chars=True))
        except ValueError as e:
            raise AssertionError(f"SKILL.md shows a command a shell cannot parse ({e}): {line}") from None
        for i, word in enumerate(words[:-1]):
            if word != "babysit" or not re.fullmatch(r"[a-z][a-z_-]*", words[i + 1]):
                continue
            path, rest = (words[i + 1],), words[i + 2:]
            if path[0] in GROUPS and rest:
                path, rest = (*path, rest[0]), rest[1:]
            flags = set()
            for w in rest:
                if re.fullmatch(r"[;&|()<>]+", w):
                    break
                if w.startswith("--"):
                    flags.add(w.split("=")[0])
            found.append((path, flags))
    return found


def cli_flags(path: tuple[str, ...]) -> set[str] | None:
    """The flags the CLI's own help lists for a verb path, or None when there is no such command."""
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "300"})
    if result.exit_code != 0:
        return None
    options = result.output[result.output.find("Options"):]  # not the docstring's example above it
    return set(re.findall(r"(?<![\w-])--[A-Za-z0-9][\w-]*", options))


def test_the_command_reader_takes_flags_and_leaves_quoted_text_alone() -> None:
    sample = ("```sh\nbabysit run --name=a --command='x --not_a_flag; y' \\\n    --force && babysit wait --name=a\n```\n"
              "Then `babysit skill install --dir=d` and `babysit list [--all]`; not `pip install --user babysit`.")
    assert shown_commands(sample) == [(("run",), {"--name", "--command", "--force"}), (("wait",), {"--name"}),
                                      (("skill", "install"), {"--dir"}), (("list",), {"--all"})]


SHOWN = shown_commands(TEXT)


def test_skill_md_shows_every_command_of_the_cli() -> None:
    root = typer.main.get_command(app)
    commands = {(name,) for name, c in root.commands.items() if not c.hidden and name not in GROUPS}
    commands |= {(g, name) for g in GROUPS for name in root.commands[g].commands}
    assert commands - {path for path, _ in SHOWN} == set()


@pytest.mark.parametrize("path", sorted({path for path, _ in SHOWN}), ids=" ".join)
def test_every_flag_shown_exists_in_the_cli(path: tuple[str, ...]) -> None:
    known = cli_flags(path)
    assert known is not None, f"SKILL.md shows `babysit {' '.join(path)}`, which is not a command"
    shown = set().union(*(flags for p, flags in SHOWN if p == path))
    assert shown - known == set(), f"`babysit {' '.join(path)}` has no such flag"


# --- where an install goes -----------------------------------------------------------------------------


def test_an_install_under_home_is_one_of_the_users_skills(tmp_path: Path) -> None:
    said = where_claude_looks(tmp_path / ".claude/skills/babysit", home=tmp_path)
    assert "skill 'babysit' as one of your skills, in every project" in said


def test_an_install_in_a_project_is_that_projects_skill(tmp_path: Path) -> None:
    said = where_claude_looks(tmp_path / "proj/.claude/skills/babysit", home=tmp_path / "home")
    assert f"in the project {tmp_path / 'proj'}" in said


def test_an_install_elsewhere_says_claude_code_will_not_find_it(tmp_path: Path) -> None:
    said = where_claude_looks(tmp_path / "tools/babysit", home=tmp_path)
    assert said.startswith(f"Claude Code does not look in {tmp_path / 'tools'}") and "~/.claude/skills/" in said


def test_a_relative_dir_is_taken_from_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    said = where_claude_looks(Path(".claude/skills/babysit"), home=tmp_path / "home")
    assert f"in the project {tmp_path}" in said


def test_install_never_writes_through_a_symlink(tmp_path: Path) -> None:
    """Seen in review: `skill install` followed a symlink where SKILL.md goes, and overwrote its target."""
    earlier = tmp_path / "earlier-copy.md"
    earlier.write_text(skill_text(None))  # babysit's own, linked in by hand
    skill = tmp_path / "skills" / "babysit"
    skill.mkdir(parents=True)
    (skill / HOOK_NAME).symlink_to(earlier)
    written = install([Target(skill, claude=True)])
    assert earlier.read_text() == skill_text(None)  # the link's target is untouched
    assert [w.changed for w in written] == [True, True]
    assert not (skill / HOOK_NAME).is_symlink() and (skill / HOOK_NAME).stat().st_mode & 0o777 == 0o755
    assert [w.changed for w in install([Target(skill, claude=True)])] == [False, False]  # twice changes nothing


def test_another_skill_at_a_target_is_left_alone_and_nothing_is_written(tmp_path: Path) -> None:
    """Seen in review: other tools ship skills named babysit, and `skill install` overwrote theirs."""
    chosen = targets(tmp_path / "home")
    theirs = chosen[1].directory / "SKILL.md"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("---\nname: babysit\ndescription: watches pull requests\n---\n")
    with pytest.raises(Occupied, match=f"a different skill is already at {theirs}"):
        install(chosen)
    assert theirs.read_text().endswith("watches pull requests\n---\n")
    assert not chosen[0].directory.exists()  # all or nothing
    theirs.unlink()
    theirs.symlink_to(tmp_path / "elsewhere.md")  # a link is someone's arrangement too
    with pytest.raises(Occupied):
        install(chosen)


def test_a_copy_from_an_earlier_babysit_is_updated(tmp_path: Path) -> None:
    skill = tmp_path / "skills" / "babysit"
    skill.mkdir(parents=True)
    earlier = TEXT.replace(MARKER, "")  # before copies carried the marker
    (skill / "SKILL.md").write_text(earlier)
    assert [w.changed for w in install([Target(skill, claude=False)])] == [True, True]
    assert MARKER in (skill / "SKILL.md").read_text()


def test_the_usual_places_and_a_projects(tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "proj"
    assert targets(home) == [Target(home / ".claude/skills/babysit", True), Target(home / ".agents/skills/babysit", False)]
    assert [t.directory for t in targets(home, project)] == [project / ".claude/skills/babysit",
                                                             project / ".agents/skills/babysit"]
    written = install(targets(home))
    assert sorted(str(w.path.relative_to(home)) for w in written) == [
        ".agents/skills/babysit/SKILL.md", f".agents/skills/babysit/{HOOK_NAME}",
        ".claude/skills/babysit/SKILL.md", f".claude/skills/babysit/{HOOK_NAME}"]
    assert set(frontmatter((home / ".agents/skills/babysit/SKILL.md").read_text())) == {
        "name", "description", "allowed-tools"}
    assert "hooks" in frontmatter((home / ".claude/skills/babysit/SKILL.md").read_text())


def test_the_plugin_and_its_hook_are_declared_as_claude_code_reads_them() -> None:
    """The plugin ships the hook always on, for Bash and Monitor, its path quoted; versions in step."""
    from babysit import __version__

    root = TEMPLATE.parents[3]
    plugin = json.loads((root / ".claude-plugin" / "plugin.json").read_text())
    (listed,) = json.loads((root / ".claude-plugin" / "marketplace.json").read_text())["plugins"]
    assert plugin["version"] == listed["version"] == __version__ and listed["source"] == "./"
    assert (root / plugin["skills"] / "SKILL.md").resolve() == TEMPLATE
    (entry,) = json.loads((root / "hooks" / "hooks.json").read_text())["hooks"]["PreToolUse"]
    assert entry["matcher"] == "Bash|Monitor"
    assert entry["hooks"] == [{"type": "command", "command": '"${CLAUDE_PLUGIN_ROOT}/hooks/no-sleep-babysit.sh"',
                               "timeout": 5}]


def test_the_agent_is_shown_how_to_chain_retry_and_sweep_instead_of_keeping_a_shell_busy() -> None:
    text = section("Chains, retries and sweeps")
    assert_says(text, "--after=prep", "--after=train", "babysit wait --name=eval", "`dependency`", "--retries=1",
                '{"event": "retry"', "--array=1-20%4", "$BABYSIT_ARRAY_INDEX", "--any")
