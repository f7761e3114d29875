"""`babysit top` in a real terminal: tmux runs it at 80x24, the test reads the screen a person would see."""

from __future__ import annotations

import shutil

import pytest

from tests.integration.conftest import BIN, Terminal, babysit
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("daemon"),
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")]


def test_top_shows_the_tasks_and_quits_on_q(terminal: Terminal, task_name: str) -> None:
    waiting = f"{task_name}-q"
    assert babysit("run", f"--name={task_name}", "--command=while true; do echo tick; sleep 1; done",
                   "--estimated_mem_bytes=64M", "--estimated_cpu_cores=1", "--estimated_time=10m").returncode == 0
    try:
        # the shell stays a while after babysit exits, so the pane shows how it ended
        terminal.start(f"{BIN / 'babysit'} top; echo top-exited-$?; sleep 60")
        def shown_running() -> str | None:
            screen = terminal.screen()
            return screen if any(task_name in line and "running" in line for line in screen.splitlines()) else None

        screen = wait_for(shown_running, 30, f"{task_name} running on the screen")
        lines = screen.splitlines()
        assert all(len(line) <= 80 for line in lines), screen
        assert "babysit top" in lines[0] and "1 running" in lines[0] and "room" in lines[0], screen
        row = next(line for line in lines if task_name in line)
        assert "/64M" in row and "/1 " in row and "s/5m" in row, row  # memory and CPU against estimates, silence
        assert "q quits" in screen
        # a task submitted meanwhile appears without any key pressed: the daemon's signals redraw it
        assert babysit("run", f"--name={waiting}", "--command=sleep 600", "--estimated_mem_bytes=64M",
                       "--estimated_cpu_cores=2", "--cpu_pct_limit=100", "--force").returncode == 0
        wait_for(lambda: waiting in terminal.screen(), 15, "the new task on the screen")
        terminal.tmux("send-keys", "-t", "top", "q")
        wait_for(lambda: "top-exited-0" in terminal.screen(), 15, "babysit top to quit on q")
    finally:
        babysit("kill", f"--name={task_name}")
        babysit("kill", f"--name={waiting}")
