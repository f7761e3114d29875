"""Text is shown, never obeyed: in a real terminal (tmux), a command with rich markup in it and output with
escape sequences in it are printed literally, and the terminal does what babysit says, not what they say."""

from __future__ import annotations

import shutil

import pytest

from tests.integration.conftest import BIN, Terminal, babysit
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("daemon"),
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")]

# the output sets the terminal's title (OSC 0) and writes its clipboard (OSC 52), then moves the cursor up
# to write over the line before it
HOSTILE = r"printf 'calm\n\033]0;pwned\007title [/] [bold]x[/bold]\n\033]52;c;cHduZWQ=\007clip\n\033[2Aover\n'"


def test_log_on_a_terminal_shows_escape_sequences_and_obeys_none(terminal: Terminal, task_name: str) -> None:
    """Seen in review: `log` relayed escape sequences from a task's output to the user's terminal."""
    assert babysit("run", f"--name={task_name}", f"--command={HOSTILE}").returncode == 0
    assert babysit("wait", f"--name={task_name}").returncode == 0
    wait_for(lambda: "over" in babysit("log", f"--name={task_name}").stdout, 15, "its last line in the journal")
    terminal.tmux("set-option", "-g", "set-clipboard", "on")  # the terminal would obey OSC 52 if it got it
    terminal.start(f"bash -c '{BIN}/babysit log --name={task_name}; echo log-exit=$?; sleep 300'")
    wait_for(lambda: "log-exit=" in terminal.screen(), 30, "log to finish")
    screen = terminal.screen()
    assert "log-exit=0" in screen, screen
    assert r"calm" in screen and r"\x1b]0;pwned\x07title [/] [bold]x[/bold]" in screen, screen
    assert r"\x1b]52;c;cHduZWQ=\x07clip" in screen and r"\x1b[2Aover" in screen, screen
    assert terminal.tmux("display-message", "-p", "#{pane_title}").stdout.strip() != "pwned"
    assert "pwned" not in terminal.tmux("show-buffer").stdout  # nothing reached the clipboard


def test_status_on_a_terminal_prints_a_command_with_markup_literally(terminal: Terminal, task_name: str) -> None:
    """Seen in review: `status` on a terminal exited 1 for a command holding `[/]`."""
    command = "echo '[/] [red]not red[/red] \\[x]'"
    assert babysit("run", f"--name={task_name}", f"--command={command}").returncode == 0
    assert babysit("wait", f"--name={task_name}").returncode == 0
    terminal.start(f"bash -c '{BIN}/babysit status --name={task_name}; echo status-exit=$?; sleep 300'")
    wait_for(lambda: "status-exit=" in terminal.screen(), 30, "status to finish")
    screen = terminal.screen()
    assert "status-exit=0" in screen and "[/] [red]not red[/red]" in screen, screen
