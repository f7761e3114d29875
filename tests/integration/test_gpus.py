"""GPUs end to end through the CLI, on a stand-in NVIDIA driver: tests/fakegpu builds a libnvidia-ml.so.1 with
NVML's ABI that babysitd loads through the binding's normal lookup (LD_LIBRARY_PATH in the user manager's
environment), fed with two 16 GiB devices; a task's processes hold GPU memory by saying so to it, as a CUDA
program's allocations show in NVML (tests/fakegpu/hog.py). The same checks against a real GPU: tests/gpu."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from babysit import __version__
from tests import fakegpu
from tests.integration.conftest import babysit, daemon_config, manager_environment, on_slurm, restart_daemon, status
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration]
GiB = 1 << 30
A, B = "GPU-0a0a0a0a-1111-2222-3333-444444444444", "GPU-0b0b0b0b-1111-2222-3333-444444444444"
HOG = Path(fakegpu.__file__).with_name("hog.py")
QUICK = "tick_s = 0.25\ntolerance_s = 2\ncpu_window_s = 1\n"
SMALL = ("--estimated_mem_bytes=64M", "--estimated_cpu_cores=0.1", "--estimated_time=5m")


@pytest.fixture(scope="module")
def figures(daemon: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """babysitd restarted on a host with two stand-in GPUs; restarted without them afterwards."""
    built = os.environ.get("BABYSIT_FAKE_NVML_LIB")  # the VM tier's guest has no compiler: run.py built it
    if not built and not shutil.which("cc"):
        pytest.skip("no C compiler to build the stand-in NVML library")
    library = Path(built) if built else fakegpu.build(tmp_path_factory.mktemp("nvml"))
    devices = tmp_path_factory.mktemp("gpus")
    (devices / "devices").write_text(f"{A} {16 * GiB} 0 10 Fake GPU\n{B} {16 * GiB} 0 20 Fake GPU\n")
    with contextlib.ExitStack() as stack:
        stack.callback(restart_daemon)  # last: babysitd without the stand-in, for the modules after this one
        stack.enter_context(manager_environment("LD_LIBRARY_PATH", str(library)))
        stack.enter_context(manager_environment("BABYSIT_FAKE_NVML", str(devices)))
        stack.enter_context(daemon_config(QUICK))
        yield devices


def hog(nbytes: int, *flags: str) -> str:
    """A CUDA program's stand-in holding NBYTES on its first visible GPU for 10 minutes."""
    return " ".join(["exec python3 -u", str(HOG), str(nbytes), "600", *flags])


def refused(done: subprocess.CompletedProcess[str]) -> dict:
    assert done.returncode == 2 and done.stdout == "", done
    return json.loads(done.stderr)


def said(name: str, text: str) -> bool:
    return text in babysit("log", f"--name={name}", "--tail=50").stdout


def test_ping_and_capacity_show_the_gpus(figures: Path) -> None:
    pong = babysit("ping")
    assert pong.stdout == f"pong {__version__}\n", pong  # one line, for scripts; the rest on stderr
    assert "gpus: 2 GPU(s): 0 Fake GPU (16 GiB), 1 Fake GPU (16 GiB)" in pong.stderr, pong
    called = subprocess.run(["busctl", "--user", "--json=short", "call", "org.babysit", "/org/babysit/Scheduler",
                             "org.babysit.Scheduler", "Capacity"], capture_output=True, text=True, timeout=30)
    assert called.returncode == 0, called.stderr
    (capacity,) = json.loads(called.stdout)["data"]
    # an av of a{sv}, as busctl writes it: each element a typed variant, each value too
    devices = [{k: v["data"] for k, v in gpu["data"].items()} for gpu in capacity["gpus"]["data"]]
    assert [(d["uuid"], d["total_bytes"], d["utilization_pct"]) for d in devices] == [
        (A, 16 * GiB, 10.0), (B, 16 * GiB, 20.0)], devices


def test_two_tasks_get_different_gpus_a_third_waits_and_takes_a_freed_one(figures: Path, task_name: str) -> None:
    first, second, third = (f"{task_name}-{n}" for n in "abc")
    for name in (first, second):
        assert babysit("run", f"--name={name}", f"--command={hog(GiB)}", "--gpus=1",
                       "--estimated_gpu_mem_bytes=2G", *SMALL).returncode == 0
    wait_for(lambda: all(said(n, "allocated") for n in (first, second)), 30, "both to allocate")
    given = {n: status(n)["gpu_uuids"] for n in (first, second)}
    assert sorted(u for uuids in given.values() for u in uuids) == [A, B], given
    for name, (uuid,) in given.items():  # each task's CUDA_VISIBLE_DEVICES named its own device
        assert said(name, f"allocated {GiB} bytes on {uuid}"), babysit("log", f"--name={name}").stdout
    wait_for(lambda: status(first).get("gpu_mem_bytes") == GiB, 30, "babysit to see the allocation")
    listed = next(line for line in babysit("list").stdout.splitlines() if first in line)
    assert "1 GPU 1 GiB/2 GiB" in listed, listed

    denial = refused(babysit("run", f"--name={third}", f"--command={hog(GiB)}", "--gpus=1", *SMALL))
    assert denial["error"] == "capacity_exceeded" and "not enough GPUs" in denial["reason"], denial
    assert denial["requested"]["gpus"] == 1 and denial["available"]["gpus"] == 0, denial
    assert "--gpus=1" in denial["hint"]

    assert babysit("run", f"--name={third}", f"--command={hog(GiB)}", "--gpus=1", *SMALL, "--force").returncode == 0
    assert "not enough GPUs" in status(third)["waiting_for"]
    assert babysit("kill", f"--name={first}").returncode == 0
    wait_for(lambda: status(third)["status"] == "running", 30, "the third to start on the freed GPU")
    assert status(third)["gpu_uuids"] == given[first]
    for name in (second, third):
        babysit("kill", f"--name={name}")


def test_a_request_no_device_can_meet_is_refused_and_a_task_without_gpus_sees_none(
        figures: Path, task_name: str) -> None:
    for flags in (["--gpus=3"], ["--gpus=1", "--estimated_gpu_mem_bytes=20G"]):
        done = babysit("run", f"--name={task_name}", f"--command={hog(GiB)}", *flags, *SMALL)
        assert done.returncode == 2 and "exceeds_cap" in done.stderr, done
    assert babysit("run", f"--name={task_name}", f"--command={hog(GiB)}", *SMALL).returncode == 0
    result = json.loads(babysit("wait", f"--name={task_name}", timeout=60).stdout)
    assert (result["status"], result["exit_code"]) == ("failed", 1), result
    assert said(task_name, "no CUDA-capable device is detected")


def test_gpu_memory_past_the_estimate_warns_and_twice_it_is_killed_with_a_hint(
        figures: Path, task_name: str) -> None:
    command = hog(GiB // 2, f"--grow-to={int(2.5 * GiB)}", "--grow-after=2")
    assert babysit("run", f"--name={task_name}", f"--command={command}", "--gpus=1",
                   "--estimated_gpu_mem_bytes=1G", *SMALL).returncode == 0
    done = babysit("wait", f"--name={task_name}", timeout=90)
    result = json.loads(done.stdout)
    assert (result["status"], result["kill_reason"]) == ("killed", "gpu_mem_2x_sustained"), result
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    risk = next(e for e in events if e.get("dim") == "gpu_mem")
    assert risk["estimate"] == GiB and risk["actual"] == int(2.5 * GiB), risk
    assert result["peak_gpu_mem_bytes"] == int(2.5 * GiB) and result["gpus"] == 1, result
    assert result["kill_hint"].startswith("GPU memory peaked at 2.5 GiB vs estimate 1 GiB per GPU"), result
    assert "--estimated_gpu_mem_bytes=3G" in result["kill_hint"], result
    timeline = json.loads(babysit("status", f"--name={task_name}", "--json").stdout)["timeline"]
    assert max(timeline["gpu_mem_bytes"]) == int(2.5 * GiB), timeline
    (past,) = json.loads(babysit("history", f"--name={task_name}", "--json").stdout)
    assert (past["kill_reason"], past["peak_gpu_mem_bytes"]) == ("gpu_mem_2x_sustained", int(2.5 * GiB)), past
    assert "gpu peak 2.5 GiB" in babysit("history", f"--name={task_name}").stdout


def test_a_runs_gpu_memory_is_learnt_for_the_next_run(figures: Path, task_name: str) -> None:
    command = f"exec python3 -u {HOG} {3 * GiB} 3"  # holds 3 GiB for 3 s, then ends well
    assert babysit("run", f"--name={task_name}", f"--command={command}", "--gpus=1",
                   "--estimated_gpu_mem_bytes=4G", *SMALL).returncode == 0
    first = json.loads(babysit("wait", f"--name={task_name}", timeout=60).stdout)
    assert (first["status"], first["peak_gpu_mem_bytes"]) == ("completed", 3 * GiB), first
    learnt = 3 * GiB * 5 // 4  # its peak with the 25 % headroom every learnt figure gets
    estimated = json.loads(babysit("estimate", f"--name={task_name}", f"--command={command}", "--gpus=1").stdout)
    assert estimated["estimated_gpu_mem_bytes"] == learnt and "per GPU" in estimated["estimates_from"], estimated
    assert babysit("run", f"--name={task_name}", f"--command={command}", "--gpus=1", *SMALL).returncode == 0
    assert status(task_name)["estimated_gpu_mem_bytes"] == learnt
    babysit("kill", f"--name={task_name}")


OPENER = ("import sys\nfor path in sys.argv[1:]:\n    try:\n        open(path, 'rb')\n        print(path, 'opened')\n"
          "    except OSError as e:\n        print(path, e.strerror)\n")


@pytest.fixture
def device_nodes(figures: Path) -> Iterator[list[Path]]:
    """/dev/nvidia0 and /dev/nvidia1, the stand-in devices' nodes (minors 0 and 1), made as NVIDIA's driver makes
    them where they are not there (and removed after); without the driver, opening a reachable one fails
    with ENXIO. Only where the fence can hold: a user manager that can make a private /dev."""
    if "cannot give a task a /dev of its own" in babysit("ping").stderr:
        pytest.skip("this host's user manager cannot make a private /dev, and ping says so")
    nodes, made = [Path("/dev/nvidia0"), Path("/dev/nvidia1")], []
    try:
        for minor, node in enumerate(nodes):
            if not node.exists():
                done = subprocess.run(["sudo", "-n", "mknod", "-m", "666", str(node), "c", "195", str(minor)],
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    pytest.skip(f"cannot make {node} here (needs root): {done.stderr.strip()}")
                made.append(node)
        yield nodes
    finally:
        for node in made:
            subprocess.run(["sudo", "-n", "rm", "-f", str(node)], check=True)


def test_a_task_can_open_only_the_gpu_it_was_given(task_name: str, device_nodes: list[Path]) -> None:
    nodes = device_nodes
    command = f'exec python3 -c "{OPENER}" {" ".join(map(str, nodes))}'
    assert babysit("run", f"--name={task_name}", f"--command={command}", "--gpus=1", *SMALL).returncode == 0
    result = json.loads(babysit("wait", f"--name={task_name}", timeout=60).stdout)
    assert result["status"] == "completed", result
    own, other = nodes if result["gpu_uuids"] == [A] else nodes[::-1]
    output = babysit("log", f"--name={task_name}", "--tail=10").stdout
    assert f"{own} No such device or address" in output or f"{own} opened" in output, output  # reachable
    assert f"{other} No such file or directory" in output or f"{other} Operation not permitted" in output, output


@pytest.mark.slurm
def test_on_slurm_gpus_are_gres_and_each_job_says_which_it_got(daemon: str, task_name: str) -> None:
    """The Slurm tier's node has two GPUs as gres (tests/slurm/cluster.py): Slurm picks, babysit reads."""
    both, one = f"{task_name}-both", f"{task_name}-one"
    command = '--command=echo "visible=$CUDA_VISIBLE_DEVICES"; sleep 60'
    with on_slurm(QUICK):
        assert babysit("run", f"--name={both}", command, "--gpus=2", *SMALL).returncode == 0
        wait_for(lambda: status(both)["status"] == "running", 60, "the two-GPU job to run")
        assert status(both)["gpu_uuids"] == ["0", "1"]
        wait_for(lambda: "visible=0,1" in babysit("log", f"--name={both}").stdout, 30, "its output")
        # a core is still free: what the next job waits for is a GPU, in Slurm's queue rather than babysit's
        assert babysit("run", f"--name={one}", command, "--gpus=1", *SMALL).returncode == 0
        wait_for(lambda: "Resources" in (status(one).get("waiting_for") or ""), 30, "Slurm's reason")
        assert babysit("kill", f"--name={both}").returncode == 0
        wait_for(lambda: status(one)["status"] == "running", 60, "the one-GPU job to run once both were free")
        (index,) = status(one)["gpu_uuids"]
        wait_for(lambda: f"visible={index}" in babysit("log", f"--name={one}").stdout, 30, "its output")
        assert babysit("kill", f"--name={one}").returncode == 0
        for name in (both, one):
            assert json.loads(babysit("wait", f"--name={name}", timeout=120).stdout)["status"] == "killed"
