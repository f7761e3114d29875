"""Learning from history, end to end: timelines in `status`, `history`, estimates and hints from earlier runs."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from babysit.core.history import HEADROOM, MIN_MEM_BYTES
from tests.integration.conftest import babysit, daemon_config, status
from tests.integration.test_cli_matrix import cli

pytestmark = [pytest.mark.integration]
PY = "/usr/bin/python3 -u -c"
MiB = 1 << 20
# generous estimates: these tests watch what a run did, no kill must cut it short
ROOMY = ["--estimated_mem_bytes=512M", "--estimated_cpu_cores=1", "--estimated_time=2m"]


@pytest.fixture(scope="module", autouse=True)
def close_sampling(daemon: str) -> Iterator[None]:
    """Samples every 0.25 s or so (calm tasks every tolerance_s/6), so a run of seconds has a timeline."""
    with daemon_config("tick_s = 0.25\ntolerance_s = 2\n"):
        yield


@pytest.fixture
def stem(task_name: str) -> str:
    """A name stem of this test's own: no other test's runs are its kin."""
    return task_name.replace("t-", "hist")


def grower(mib: int, steps: int, then_silent_s: float = 0.0) -> str:
    """Python that grows to `mib` MiB in `steps` printed steps (0.4 s apart), then stays silent a while."""
    code = (f"import time\nc = []\nfor i in range({steps}):\n"
            f"    c.append(bytearray(b'x') * ({mib // steps} << 20)); print('step', i, flush=True); time.sleep(0.4)\n"
            f"time.sleep({then_silent_s})\n")
    return f'{PY} "{code}"'


def run(name: str, command: str, *flags: str) -> str:
    started = babysit("run", f"--name={name}", f"--command={command}", *flags)
    assert started.returncode == 0, started.stderr
    return started.stdout.strip()


def completed(name: str) -> dict:
    done = babysit("wait", f"--name={name}", timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_status_shows_memory_cpu_and_output_over_the_run(stem: str) -> None:
    name = f"{stem}-1"
    run(name, grower(96, steps=6, then_silent_s=2.5), *ROOMY)
    completed(name)
    timeline = status(name)["timeline"]
    at = timeline["at_s"]
    assert len(at) >= 4 and at == sorted(at), timeline
    assert {len(timeline[k]) for k in ("mem_bytes", "cpu_cores", "wrote")} == {len(at)}
    assert max(timeline["mem_bytes"]) >= 80 * MiB, timeline
    assert timeline["mem_bytes"][0] < max(timeline["mem_bytes"]), "memory grew over the run"
    assert timeline["wrote"][0] and not timeline["wrote"][-1], "printing, then silent"
    shown = cli("status", f"--name={name}", tty=True).out
    memory = next(line for line in shown.splitlines() if line.split()[:1] == ["memory"])
    assert "peak" in memory and "estimate 512 MiB" in memory and "cap 1.5 GiB" in memory, shown


def test_estimates_left_out_come_from_earlier_runs(stem: str) -> None:
    first = f"{stem}-1"
    run(first, grower(96, steps=3), *ROOMY)
    peak = completed(first)["peak_mem_bytes"]
    expected_mem = max(MIN_MEM_BYTES, -(-int(peak * HEADROOM) // MiB) * MiB)

    suggested = json.loads(babysit("estimate", f"--name={stem}-2", f"--command={grower(96, steps=3)}").stdout)
    assert (suggested["runs"], suggested["estimated_mem_bytes"]) == (1, expected_mem), suggested
    assert suggested["estimates_from"].startswith(f"1 earlier run named like {stem}: "), suggested

    second = f"{stem}-2"
    said = run(second, grower(96, steps=3))
    assert said.startswith(f"queued: {second} (estimates from 1 earlier run named like {stem}: "), said
    shown = status(second)
    assert shown["estimated_mem_bytes"] == expected_mem and shown["estimated_time_s"] == 60  # the floor
    assert shown["estimates_from"] == said.split("(estimates from ", 1)[1].rstrip(")")
    completed(second)

    # an explicit flag wins; only what was left out is learned, from the same name now
    third = f"{stem}-3"
    said = run(third, grower(96, steps=3), "--estimated_mem_bytes=300M")
    assert "estimates from" in said and "MiB" not in said, said
    assert status(third)["estimated_mem_bytes"] == 300 * MiB
    completed(third)
    fresh = f"{stem}x"
    assert run(fresh, f"echo {fresh}") == f"queued: {fresh}", "no history: the defaults, and nothing said"


def test_history_lists_runs_against_their_estimates(stem: str) -> None:
    for i in (1, 2):
        run(f"{stem}-{i}", grower(32, steps=2), *ROOMY)
        completed(f"{stem}-{i}")
    runs = json.loads(babysit("history", f"--name={stem}-2", "--json").stdout)
    assert [r["name"] for r in runs] == [f"{stem}-2"]
    (entry,) = runs
    assert entry["status"] == "completed" and entry["estimated_mem_bytes"] == 512 * MiB
    assert entry["peak_mem_bytes"] >= 32 * MiB and entry["p95_cpu_cores"] is not None and entry["elapsed_s"] > 0.5
    everything = json.loads(babysit("history", "--limit=2", "--json").stdout)
    assert [r["name"] for r in everything] == [f"{stem}-1", f"{stem}-2"]
    table = babysit("history", f"--name={stem}-1").stdout.splitlines()
    assert table[0].split()[:3] == ["submitted", "name", "state"] and f"{stem}-1" in table[1], table


def test_a_kill_hint_cites_the_earlier_runs(stem: str) -> None:
    run(f"{stem}-1", grower(96, steps=3), *ROOMY)
    completed(f"{stem}-1")
    name = f"{stem}-2"  # the same job with far too small an estimate: its cap (3x) is met
    run(name, grower(96, steps=3), "--estimated_mem_bytes=16M", "--estimated_cpu_cores=1", "--estimated_time=2m")
    done = babysit("wait", f"--name={name}", timeout=90)
    result = json.loads(done.stdout)
    assert (result["status"], result["kill_reason"]) == ("killed", "oom"), result
    assert "; the last run peaked at " in result["kill_hint"], result["kill_hint"]


def test_the_history_stays_bounded(stem: str) -> None:
    for i in (1, 2, 3):
        run(f"{stem}-{i}", "true", *ROOMY)
        completed(f"{stem}-{i}")
    with daemon_config("tick_s = 0.25\ntolerance_s = 2\nhistory_max_runs = 2\n"):  # it prunes as it starts
        kept = json.loads(babysit("history", "--limit=100", "--json").stdout)
    assert [r["name"] for r in kept] == [f"{stem}-2", f"{stem}-3"]
