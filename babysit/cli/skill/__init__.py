"""`babysit skill install`: the skill document for coding agents, and its no-sleep hook.

Claude Code loads a skill from `<skills>/<name>/SKILL.md`, where `<skills>` is `~/.claude/skills` (the
user's skills, for every project) or `.claude/skills` inside a project. The hook is declared in
SKILL.md's frontmatter and runs while the skill is loaded.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from babysit.cli.install import source_file

HOOK = "hooks/no-sleep-babysit.sh"
HOOK_NAME = "no-sleep-babysit.sh"
TEMPLATE = Path(__file__).parent / "SKILL.md"
# Claude Code substitutes ${CLAUDE_SKILL_DIR} in a skill's content, not in its frontmatter hook
# commands (anthropics/claude-code#36135), so the hook is named by its absolute path.
PLACEHOLDER = '"@HOOK@"'


@dataclass(frozen=True)
class Written:
    """One installed file, and whether this install changed it."""

    path: Path
    changed: bool


def hook_command(hook: Path) -> str:
    """The hook's command line: a shell word for the path (Claude Code runs it through a shell)."""
    return shlex.quote(str(hook))


def skill_text(hook: Path) -> str:
    """SKILL.md with the hook's command line in its frontmatter, as a YAML double-quoted string."""
    return TEMPLATE.read_text().replace(PLACEHOLDER, json.dumps(hook_command(hook)))


def write(path: Path, text: str, mode: int) -> Written:
    """Write `text` with `mode` unless the file already is exactly that: installing twice changes nothing.

    Never through a symlink: a new file is written beside it and renamed over the link itself, so what a
    link there pointed to stays as it was.
    """
    if not path.is_symlink() and path.exists() and path.read_text() == text and path.stat().st_mode & 0o777 == mode:
        return Written(path, changed=False)
    staged = path.with_name(f".{path.name}.new")
    staged.unlink(missing_ok=True)
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    staged.chmod(mode)  # the umask may have taken bits away
    staged.replace(path)
    return Written(path, changed=True)


def install(directory: Path) -> list[Written]:
    """Write SKILL.md (pointing at the hook) and the hook into `directory`."""
    directory = directory.expanduser().absolute()  # the hook's path must work from any directory
    directory.mkdir(parents=True, exist_ok=True)
    hook = directory / HOOK_NAME
    return [write(directory / "SKILL.md", skill_text(hook), 0o644),
            write(hook, source_file(HOOK).read_text(), 0o755)]


def notes(directory: Path, home: Path) -> list[str]:
    """What `babysit skill install` says after the files: how Claude Code finds the skill and runs the hook."""
    return [where_claude_looks(directory, home), *hook_lines(directory)]


def where_claude_looks(directory: Path, home: Path) -> str:
    """How Claude Code will find a skill installed in `directory` (or that it will not)."""
    directory = directory.expanduser().absolute()
    skills = directory.parent
    if skills.name != "skills" or skills.parent.name != ".claude":
        return (f"Claude Code does not look in {skills}: it loads skills from ~/.claude/skills/<name>/SKILL.md "
                "(yours, in every project) or .claude/skills/<name>/SKILL.md in a project; install there instead "
                "(--dir).")
    scope = ("as one of your skills, in every project" if skills == home / ".claude" / "skills"
             else f"in the project {skills.parent.parent}")
    return (f"Claude Code loads it as the skill {directory.name!r} {scope}; a session already running sees it "
            "after /reload-skills or a restart.")


def hook_lines(directory: Path) -> list[str]:
    """The hook's command line as written into SKILL.md, and why it is an absolute path."""
    hook = directory.expanduser().absolute() / HOOK_NAME
    return [f"Hook (PreToolUse, matcher Bash) in SKILL.md's frontmatter: command: {json.dumps(hook_command(hook))}",
            "  an absolute path, because Claude Code does not expand ${CLAUDE_SKILL_DIR} in hook commands: "
            "run `babysit skill install` again after moving this directory."]
