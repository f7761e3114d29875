"""The no-sleep hook on real PreToolUse payloads."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

HOOK = Path(__file__).resolve().parents[2] / "hooks" / "no-sleep-babysit.sh"


def hook(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(HOOK)], input=stdin, capture_output=True, text=True, timeout=5)


def payload(command: str, tool: str = "Bash") -> str:
    return json.dumps({"session_id": "s1", "transcript_path": "/tmp/t.jsonl", "cwd": "/home/u/project",
                       "hook_event_name": "PreToolUse", "tool_name": tool,
                       "tool_input": {"command": command, "description": "check the job"}})


@pytest.mark.parametrize("command", [
    "sleep 60 && babysit log --name=x",
    "sleep 30; babysit status --name=x",
    "while true; do babysit status --name=x; sleep 10; done",
    "until babysit status --name=x | grep -q completed; do sleep 5; done",
    "for i in $(seq 100); do babysit log --name=x --tail=5; sleep 30; done",
    "sleep 0.5 && ~/.local/bin/babysit list",
    "watch -n 5 babysit status --name=x",
    "cd /srv && sleep 120\nbabysit log --name=x --tail=20",
])
def test_polling_is_blocked(command: str) -> None:
    done = hook(payload(command))
    assert done.returncode == 2
    assert "babysit wait --name=" in done.stderr and done.stdout == ""


def test_the_message_names_the_task() -> None:
    assert "babysit wait --name=train-7" in hook(payload("sleep 60 && babysit log --name=train-7")).stderr


@pytest.mark.parametrize("stdin", [
    payload("sleep 5"),
    payload("babysit log --name=x"),
    payload("babysit wait --name=x"),
    payload("babysit wait --name=x; sleep 5"),
    payload("grep sleep notes.txt | babysit list"),
    payload("echo 'sleep 60 && babysit status --name=x' >> NOTES.md"),
    payload("babysit run --name=x --command='sleep 60'"),
    payload("sleep 60 && babysit status --name=x", tool="Read"),
    "not json at all",
    json.dumps({"tool_name": "Bash"}),
    json.dumps({"tool_name": "Bash", "tool_input": {"command": 5}}),
    "",
])
def test_everything_else_passes_silently(stdin: str) -> None:
    done = hook(stdin)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_it_answers_well_within_its_budget() -> None:
    started = time.monotonic()
    hook(payload("sleep 60 && babysit log --name=x"))
    assert time.monotonic() - started < 2
