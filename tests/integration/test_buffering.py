"""Native loggers under babysit: a real C stdio program is seen line by line, not killed as stalled."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import babysit, journal

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("daemon")]

# one line every 0.5 s for 4 s: plenty of output, but through C stdio, which block-buffers a pipe
LOGGER_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
    for (int i = 1; i <= 8; i++) { printf("[%d/8] working\n", i); usleep(500000); }
    return 0;
}
"""


@pytest.fixture(scope="module")
def native_logger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("native")
    (directory / "logger.c").write_text(LOGGER_C)
    subprocess.run(["cc", "-O2", "-o", str(directory / "logger"), str(directory / "logger.c")], check=True)
    return directory / "logger"


def run_and_wait(name: str, command: str, *flags: str) -> dict:
    started = babysit("run", f"--name={name}", f"--command={command}", "--observability_interval=2s", *flags)
    assert started.returncode == 0, started.stderr
    return json.loads(babysit("wait", f"--name={name}", timeout=60).stdout)


def line_gaps(name: str) -> list[float]:
    """Seconds between the task's journal entries (journald's receive times)."""
    out = journal(name, "json")
    times = [int(json.loads(line)["__REALTIME_TIMESTAMP"]) / 1e6 for line in out.splitlines()]
    return [b - a for a, b in zip(times, times[1:])]


def test_a_c_program_is_line_buffered_by_default(native_logger: Path, task_name: str,
                                                 figure: Callable[[str], None]) -> None:
    result = run_and_wait(task_name, str(native_logger))
    assert result["status"] == "completed", result
    gaps = line_gaps(task_name)
    assert len(gaps) == 7 and max(gaps) < 1.5, gaps  # each line arrived when it was printed
    figure(f"native logger, --buffering=line: 8 lines, largest gap {max(gaps):.2f} s; completed")


def test_buffering_default_leaves_the_program_its_own_buffer(native_logger: Path, task_name: str) -> None:
    """The old behaviour, still there for binary output: the lines wait in the buffer, and the task looks
    silent for longer than its interval."""
    result = run_and_wait(task_name, str(native_logger), "--buffering=default")
    assert (result["status"], result["kill_reason"]) == ("killed", "observability_stall"), result


def test_a_bad_buffering_value_is_refused(task_name: str) -> None:
    refused = babysit("run", f"--name={task_name}", "--command=true", "--buffering=full")
    assert refused.returncode == 2 and "buffering must be one of line, default" in refused.stderr
