"""Two login nodes that share one home over NFS run one babysitd each, at once, and never share a store:
neither adopts, ends or runs the other's tasks, also across restarts.

Two private sessions (tests/session/run.py) with host names of their own and the same home directory
stand for the two hosts. Each starts a running and a queued task, then waits for the other to have done
the same before it restarts its babysitd, so each restart meets the other host's records if they were
shared. The scenario is one bash script, run by both with the names swapped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.session.run import TEST_UID, TEST_USER, ensure_test_user

pytestmark = pytest.mark.host
ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "tests" / "session" / "run.py"
BABYSIT = ROOT / ".venv" / "bin" / "babysit"
HOSTS = ("login-a", "login-b")

# $1: this host, $2: the other. `meet X` marks this host's step X done and waits for the other's.
SCENARIO = f"""
set -eu
me=$1 other=$2
babysit() {{ {BABYSIT} "$@"; }}
meet() {{
  touch ~/"$1-$me"
  for _ in $(seq 1200); do [ -e ~/"$1-$other" ] && return; sleep 0.1; done
  echo "$other never reached $1"; exit 9
}}
[ "$(hostname)" = "$me" ]
babysit daemon-start >/dev/null
babysit run --name="long-$me" --command='sleep 600' --estimated_cpu_cores=0.6 --estimated_time=20m >/dev/null
babysit run --name="next-$me" --command='true' --estimated_cpu_cores=0.6 --force >/dev/null
meet started
systemctl --user restart babysitd
echo "after restart: $(babysit list --all --json)"
meet checked
babysit kill --name="long-$me"
babysit wait --name="next-$me" >/dev/null
echo "at the end: $(babysit list --all --json)"
meet ended
"""


def states(output: str, when: str) -> dict[str, str]:
    """The tasks and their states that `babysit list --all --json` showed at `when`."""
    line = next(line for line in output.splitlines() if line.startswith(f"{when}: "))
    return {task["name"]: task["status"] for task in json.loads(line.removeprefix(f"{when}: "))}


@pytest.mark.timeout(300)
def test_two_hosts_sharing_a_home_keep_to_their_own_tasks() -> None:
    user = ensure_test_user(TEST_USER, TEST_UID)
    with tempfile.TemporaryDirectory(prefix="babysit-shared-home-", dir="/var/tmp") as home:
        os.chown(home, user.pw_uid, user.pw_gid)
        config = Path(home, ".config", "babysit")
        config.mkdir(parents=True)
        config.joinpath("config.toml").write_text("cpu_budget_cores = 1\n")  # one task runs, the next waits
        for path in (config.parent, config, config / "config.toml"):
            os.chown(path, user.pw_uid, user.pw_gid)
        hosts = [subprocess.Popen(
            [sys.executable, str(RUNNER), "--timeout", "240", "--hostname", me, "--home", home, "--",
             "bash", "-c", SCENARIO, "scenario", me, other],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            for me, other in (HOSTS, HOSTS[::-1])]
        outputs = [host.communicate(timeout=280) for host in hosts]
        for host, (out, err) in zip(hosts, outputs, strict=True):
            assert host.returncode == 0, out + err
            assert "host clean" in err, err
        for me, (out, _err) in zip(HOSTS, outputs, strict=True):
            assert states(out, "after restart") == {f"long-{me}": "running", f"next-{me}": "queued"}
            assert states(out, "at the end") == {f"long-{me}": "killed", f"next-{me}": "completed"}
        directories = list(Path(home, ".local", "state", "babysit").iterdir())  # one per machine id
        assert sorted((d / "host").read_text().strip() for d in directories) == sorted(HOSTS)
        assert all(len(d.name) == 32 for d in directories), directories
