"""`babysit skill install`: the skill document for coding agents, and its no-sleep hook."""

from __future__ import annotations

from pathlib import Path

from babysit.install import source_file

HOOK = "hooks/no-sleep-babysit.sh"


def install(directory: Path) -> list[Path]:
    """Write SKILL.md (pointing at the hook) and the hook into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    hook = directory / "no-sleep-babysit.sh"
    hook.write_text(source_file(HOOK).read_text())
    hook.chmod(0o755)
    skill = directory / "SKILL.md"
    skill.write_text((Path(__file__).parent / "SKILL.md").read_text().replace("@HOOK@", str(hook)))
    return [skill, hook]
