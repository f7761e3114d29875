"""Direct mode leaves a user's own babysit alone: it refuses to run beside one, and removes what the tests made.

Each test builds a private session (root, private mode) whose test user then runs the runner again, in
direct mode, as a developer would on a laptop. The private session mounts a fresh, empty HOME for the
test user, seen only inside its namespaces: nothing a test writes there reaches the host or the next test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host
ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "tests" / "session" / "run.py"

# What a test compares before and after direct mode: what HOME holds (files with their size and mtime;
# a directory's mtime changes with its entries) and babysit's loaded units. The runner is stdlib only:
# the test user runs it with the system Python.
PRELUDE = f"""
set -u
[ -z "$(ls -A ~)" ] || {{ echo "HOME is not fresh"; exit 99; }}
direct() {{ /usr/bin/python3 {RUNNER} "$@"; echo "direct mode exited $?"; }}
snapshot() {{
  find ~ -mindepth 1 \\( -type d -printf '%p/\\n' -o -printf '%p %s %T@\\n' \\) | sort
  systemctl --user list-units --all --plain --no-legend 'babysit*'
}}
"""
UNCHANGED = '[ "$before" = "$(snapshot)" ] && echo "HOME and units as before" || snapshot'

# babysit's footprint as the integration tests leave it: its files, a running daemon, a running task
# (no single quotes: it goes inside `sh -c '...'`).
INSTALL_FAKE_BABYSIT = """
set -e
mkdir -p ~/.config/systemd/user ~/.local/share/dbus-1/services ~/.local/state/babysit ~/.config/babysit
printf "[Service]\\nExecStart=/bin/sleep 600\\n" > ~/.config/systemd/user/babysitd.service
printf "[Slice]\\n" > ~/.config/systemd/user/babysit.slice
printf "[D-BUS Service]\\nName=org.babysit\\nExec=/bin/false\\n" > ~/.local/share/dbus-1/services/org.babysit.service
echo tasks > ~/.local/state/babysit/babysit.sqlite3
echo "# settings" > ~/.config/babysit/config.toml
systemctl --user daemon-reload
systemctl --user start babysitd.service
systemd-run --user --quiet --unit=babysit-t-1 --slice=babysit.slice /bin/sleep 600
"""


def stopped_units(stderr: str) -> set[str]:
    """The units direct mode's cleanup line says it stopped."""
    line = next(line for line in stderr.splitlines() if line.startswith("session: cleaned up babysit"))
    return set(line.split("stopped ", 1)[1].split(";")[0].split(", "))


def in_private_session(script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A bash script run as the test user in a fresh private session; the host is checked clean after."""
    done = subprocess.run([sys.executable, str(RUNNER), "--timeout", str(timeout), "--", "bash", "-c",
                           PRELUDE + script], capture_output=True, text=True, timeout=timeout + 30)
    assert "host clean" in done.stderr, done.stdout + done.stderr
    return done


def test_an_installed_unit_file_is_refused_and_left_untouched() -> None:
    done = in_private_session(f"""
mkdir -p ~/.config/systemd/user
echo '# my own babysitd' > ~/.config/systemd/user/babysitd.service
before=$(snapshot)
direct --timeout 60 -- touch ~/tests-ran
{UNCHANGED}
""")
    assert "direct mode exited 2" in done.stdout, done.stdout + done.stderr
    assert "HOME and units as before" in done.stdout  # the command never ran: no ~/tests-ran
    assert "this user has a babysit of their own" in done.stderr
    assert "  /home/babysit-test/.config/systemd/user/babysitd.service\n" in done.stderr
    assert f"sudo python3 {RUNNER.relative_to(ROOT)} --timeout 60 -- touch " in done.stderr


def test_a_running_task_unit_is_refused_and_keeps_running() -> None:
    done = in_private_session(f"""
systemd-run --user --quiet --unit=babysit-mine /bin/sleep 600
before=$(snapshot)
direct -- true
{UNCHANGED}
systemctl --user is-active babysit-mine.service
""")
    assert "direct mode exited 2" in done.stdout, done.stdout + done.stderr
    assert "  loaded unit babysit-mine.service\n" in done.stderr
    assert done.stdout.splitlines()[-2:] == ["HOME and units as before", "active"]


def test_what_the_tests_installed_is_removed_even_when_they_fail() -> None:
    done = in_private_session(f"""
before=$(snapshot)
direct -- sh -c '{INSTALL_FAKE_BABYSIT}
exit 5'
{UNCHANGED}
""")
    assert "direct mode exited 5" in done.stdout, done.stdout + done.stderr
    assert "HOME and units as before" in done.stdout
    assert stopped_units(done.stderr) == {"babysit-t-1.service", "babysitd.service", "babysit.slice"}


def test_a_command_that_times_out_is_ended_and_cleaned_up_after() -> None:
    done = in_private_session(f"""
before=$(snapshot)
direct --timeout 5 -- sh -c '{INSTALL_FAKE_BABYSIT}
exec sleep 600'
{UNCHANGED}
""")
    assert "direct mode exited 124" in done.stdout, done.stdout + done.stderr
    assert "HOME and units as before" in done.stdout
    assert "timed out after 5s" in done.stderr
    assert stopped_units(done.stderr) == {"babysit-t-1.service", "babysitd.service", "babysit.slice"}


def test_ctrl_c_ends_the_command_and_cleans_up_after() -> None:
    # A terminal's Ctrl-C sends SIGINT to the whole foreground process group: with job control (set -m)
    # the background runner gets a group of its own, and does not ignore SIGINT as background jobs do.
    done = in_private_session(f"""
set -m
before=$(snapshot)
/usr/bin/python3 {RUNNER} -- sh -c '{INSTALL_FAKE_BABYSIT}
touch "$XDG_RUNTIME_DIR/installed"
exec sleep 600' &
runner=$!
for _ in $(seq 600); do [ -e "$XDG_RUNTIME_DIR/installed" ] && break; sleep 0.05; done
kill -INT -- -$runner
wait $runner
echo "direct mode exited $?"
{UNCHANGED}
""")
    assert "direct mode exited 130" in done.stdout, done.stdout + done.stderr
    assert "HOME and units as before" in done.stdout
    assert "SIGINT: ending sh, then cleaning up" in done.stderr
    assert stopped_units(done.stderr) == {"babysit-t-1.service", "babysitd.service", "babysit.slice"}


def test_a_real_daemon_and_task_are_removed() -> None:
    # what the integration tests really leave, as babysit writes it: files, database, daemon, task
    done = in_private_session(f"""
before=$(snapshot)
direct -- sh -c 'set -e
.venv/bin/babysit daemon-start
.venv/bin/babysit run --name=t-1 --command="sleep 600" --estimated_time=10m --estimated_mem_bytes=16M \\
  --estimated_cpu_cores=0.01
systemctl --user is-active babysit-t-1.service'
{UNCHANGED}
""")
    assert "direct mode exited 0" in done.stdout, done.stdout + done.stderr
    assert "HOME and units as before" in done.stdout
    assert stopped_units(done.stderr) == {"babysit-t-1.service", "babysitd.service", "babysit.slice"}
