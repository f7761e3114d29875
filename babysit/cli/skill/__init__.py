"""`babysit skill install`: the skill document for coding agents, and its no-sleep hook.

One SKILL.md, in the open Agent Skills format (this package's, which is also the Claude Code plugin's skill),
goes where each kind of agent looks for skills:

- Claude Code: `~/.claude/skills/babysit/` (or a project's `.claude/skills/babysit/`). Its copy also
  declares the hook in its frontmatter (`hooks` is a Claude Code key), so the hook runs while the skill is
  loaded; the plugin (.claude-plugin/) declares it always on instead.
- Codex CLI, Gemini CLI, GitHub Copilot, Cursor, opencode: `~/.agents/skills/babysit/` (or a project's
  `.agents/skills/babysit/`), the file as it is, with the hook beside it for the agent's own hook config.

A different skill already at a target is never overwritten, and no file is written through a symlink.
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
MARKER = "<!-- babysit's own skill: `babysit skill install` keeps it up to date -->"  # how its copies are known
EARLIER_MARK = "\n# babysit: supervised background jobs\n"  # ...and those of versions before the marker
# Claude Code substitutes ${CLAUDE_SKILL_DIR} in a skill's content, not in its frontmatter hook
# commands (anthropics/claude-code#36135), so the hook is named by its absolute path.
HOOKS = """hooks:
  PreToolUse:
    - matcher: "Bash|Monitor"
      hooks:
        - type: command
          command: {command}
          timeout: 5
"""


class Occupied(Exception):
    """A different skill (or a link to one) is where babysit's would go; the message says where."""


@dataclass(frozen=True)
class Target:
    """Where one copy of the skill goes, and for which kind of agent."""

    directory: Path
    claude: bool  # Claude Code's copy declares the hook in its frontmatter


def targets(home: Path, project: Path | None = None) -> list[Target]:
    """The user's skill directories (Claude Code's and the agents' shared one), or a project's."""
    root = project or home
    return [Target(root / ".claude" / "skills" / "babysit", claude=True),
            Target(root / ".agents" / "skills" / "babysit", claude=False)]


@dataclass(frozen=True)
class Written:
    """One installed file, and whether this install changed it."""

    path: Path
    changed: bool


def hook_command(hook: Path) -> str:
    """The hook's command line: a shell word for the path (Claude Code runs it through a shell)."""
    return shlex.quote(str(hook))


def skill_text(hook: Path | None) -> str:
    """SKILL.md; with a hook, its command line is declared in the frontmatter (Claude Code's form)."""
    text = TEMPLATE.read_text()
    if hook is None:
        return text
    end = text.index("\n---\n", 4) + 1  # the frontmatter's closing line
    return text[:end] + HOOKS.format(command=json.dumps(hook_command(hook))) + text[end:]


def ours(path: Path) -> bool:
    """Whether a SKILL.md there is babysit's own (an earlier install): a link, or another skill, is not."""
    try:
        text = path.read_text(errors="replace")
        return not path.is_symlink() and (MARKER in text or EARLIER_MARK in text)
    except OSError:
        return False


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


def install(chosen: list[Target]) -> list[Written]:
    """Write SKILL.md and the hook into each target, or nothing at all if any holds a different skill."""
    chosen = [Target(t.directory.expanduser().absolute(), t.claude) for t in chosen]  # hook paths work anywhere
    taken = [t.directory / "SKILL.md" for t in chosen
             if (t.directory / "SKILL.md").exists() or (t.directory / "SKILL.md").is_symlink()]
    foreign = [path for path in taken if not ours(path)]
    if foreign:
        raise Occupied(f"a different skill is already at {', '.join(map(str, foreign))}: babysit leaves it alone; "
                       "move it away, or install elsewhere (--dir)")
    written = []
    for target in chosen:
        target.directory.mkdir(parents=True, exist_ok=True)
        hook = target.directory / HOOK_NAME
        written += [write(target.directory / "SKILL.md", skill_text(hook if target.claude else None), 0o644),
                    write(hook, source_file(HOOK).read_text(), 0o755)]
    return written


def notes(chosen: list[Target], home: Path) -> list[str]:
    """What `babysit skill install` says after the files: how each agent finds the skill and runs the hook."""
    lines = []
    for target in chosen:
        if target.claude:
            lines += [where_claude_looks(target.directory, home), *hook_lines(target.directory)]
        else:
            lines.append(f"Codex CLI, Gemini CLI, GitHub Copilot, Cursor and opencode load it from "
                         f"{target.directory.expanduser().absolute()}; their hook config can run "
                         f"{target.directory.expanduser().absolute() / HOOK_NAME} (see the README).")
    return lines


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
    return [f"Hook (PreToolUse, matcher Bash|Monitor) in SKILL.md's frontmatter: command: "
            f"{json.dumps(hook_command(hook))}",
            "  an absolute path, because Claude Code does not expand ${CLAUDE_SKILL_DIR} in hook commands: "
            "run `babysit skill install` again after moving this directory."]
