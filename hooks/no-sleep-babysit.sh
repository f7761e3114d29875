#!/usr/bin/env bash
# Claude Code PreToolUse hook for Bash: refuse commands that poll babysit in a sleep loop
# (`sleep 60 && babysit log …`, `while …; do babysit status …; sleep …; done`, …) and point to
# `babysit wait`, which blocks on D-Bus signals instead. Anything else passes silently (exit 0),
# including input that is not what this hook expects: it never blocks on a parse failure.
exec python3 -c '
import json, re, sys

try:
    payload = json.load(sys.stdin)
    command = payload["tool_input"]["command"] if payload.get("tool_name") == "Bash" else None
except Exception:
    sys.exit(0)
if not isinstance(command, str):
    sys.exit(0)

# a word in command position: at the start, after ; & | ( ) { } ! a newline, or a shell keyword
AT = r"(?:^|[;&|(){}!\n]|\b(?:do|then|else|while|until|if)\b)\s*"
BABYSIT_READ = r"(?:\S*/)?babysit\s+(?:log|status|list)\b"
sleeps = re.search(AT + r"sleep\s+[0-9.]", command)
polls = re.search(AT + BABYSIT_READ, command)
loops = re.search(r"\b(?:while|until)\b[\s\S]*\bdo\b", command)
watched = re.search(AT + r"watch\b[^;&|\n]*\s" + BABYSIT_READ, command)
if watched:
    polls = loops = watched
if not (polls and (sleeps or loops)):
    sys.exit(0)
name = re.search(r"--name[= ]([A-Za-z0-9._-]+)", command)
name = name.group(1) if name else "NAME"
print(
    f"Do not poll babysit in a sleep loop. Run `babysit wait --name={name}` in the background instead: "
    "it blocks until the task is terminal (driven by D-Bus signals, no polling), prints runaway_risk "
    "events on stderr as they happen and the result JSON on stdout, and exits 0 only if the task "
    f"completed. Read output once with `babysit log --name={name} --tail=50`.",
    file=sys.stderr,
)
sys.exit(2)
'
