"""The GPU checks against a real NVIDIA GPU, where one is: NVML as babysit reads it, a real CUDA program's
allocation matched to its processes, and (through the session runner) the end-to-end path of
tests/integration/test_gpus.py on the real device. Run it on a machine with a GPU:

    .venv/bin/pytest -m gpu tests/gpu                                   # NVML and CUDA, no session
    python3 tests/session/run.py .venv/bin/pytest -m gpu tests/gpu      # and the CLI end to end
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from babysit.common.nvml import Nvml
from babysit.core import gpus
from tests.integration.conftest import babysit, daemon, status, task_name
from tests.waiting import wait_for

__all__ = ["daemon", "task_name"]  # the session tier's fixtures, for the end-to-end check
pytestmark = [pytest.mark.gpu]
NVML = Nvml()
HOG = Path(__file__).with_name("cuda_hog.py")
MiB = 1 << 20
if not NVML.read():
    pytest.skip(f"no real GPU here: {NVML.why()}", allow_module_level=True)


def test_nvml_shows_each_device_with_sane_figures() -> None:
    for gpu in NVML.read():
        assert gpu.uuid.startswith("GPU-") and gpu.name and gpu.total_bytes > 1 << 30, gpu
        assert 0 <= gpu.used_bytes <= gpu.total_bytes and 0 <= gpu.utilization_pct <= 100, gpu
        assert Path(gpu.node).exists(), gpu.node


def test_a_cuda_programs_allocation_is_matched_to_its_process() -> None:
    first = NVML.read()[0]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": first.uuid}
    hog = subprocess.Popen([sys.executable, str(HOG), str(256 * MiB), "120"], env=env, stdout=subprocess.PIPE,
                           text=True)
    try:
        assert hog.stdout is not None
        assert f"on {first.uuid}" in hog.stdout.readline()  # CUDA_VISIBLE_DEVICES by UUID was obeyed
        wait_for(lambda: gpus.use(NVML.read(), [first.uuid], [hog.pid]).mem_bytes >= 256 * MiB, 30,
                 "NVML to show the allocation")
        assert gpus.use(NVML.read(), [first.uuid], [hog.pid + 100000]).mem_bytes == 0
    finally:
        hog.kill()
        hog.wait()


@pytest.mark.integration
def test_a_task_given_a_gpu_runs_on_it_and_its_use_is_seen(daemon: str, task_name: str) -> None:
    first = NVML.read()[0]
    assert babysit("run", f"--name={task_name}", f"--command=exec python3 -u {HOG} {256 * MiB} 120", "--gpus=1",
                   "--estimated_gpu_mem_bytes=1G", "--estimated_mem_bytes=1G").returncode == 0
    wait_for(lambda: (status(task_name).get("gpu_mem_bytes") or 0) >= 256 * MiB, 60, "babysit to see its GPU memory")
    given = status(task_name)["gpu_uuids"]
    assert len(given) == 1 and given[0] in {g.uuid for g in NVML.read()}, given
    assert f"on {given[0]}" in babysit("log", f"--name={task_name}").stdout
    assert babysit("kill", f"--name={task_name}").returncode == 0
    result = json.loads(babysit("wait", f"--name={task_name}").stdout)
    assert result["peak_gpu_mem_bytes"] >= 256 * MiB and result["gpus"] == 1, (result, first)
