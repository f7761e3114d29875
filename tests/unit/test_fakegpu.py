"""The fake NVML answers the official binding (pynvml) the way a real driver would, from plain files."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import fakegpu

GiB = 1 << 30
A100 = "GPU-11111111-2222-3333-4444-555555555555"
H100 = "GPU-66666666-7777-8888-9999-000000000000"
DEVICES = f"{A100} {80 * GiB} {GiB} 37 NVIDIA A100-SXM4-80GB\n{H100} {94 * GiB} 0 0 NVIDIA H100 NVL\n"
HOG = Path(fakegpu.__file__).with_name("hog.py")
NVML_ERROR_UNINITIALIZED, NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_UNKNOWN = 1, 9, 999

# Runs in its own process, since the dynamic loader reads LD_LIBRARY_PATH only at start: one snapshot of
# everything pynvml reports per line read on stdin, so a test can change the files between two of them.
PROBE = r"""
import json, sys
import pynvml

def device(handle):
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    memory_v2 = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
    uuid = pynvml.nvmlDeviceGetUUID(handle)
    return {"index": pynvml.nvmlDeviceGetIndex(handle), "minor": pynvml.nvmlDeviceGetMinorNumber(handle),
            "uuid": uuid, "name": pynvml.nvmlDeviceGetName(handle),
            "same_by_uuid": pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByUUID(uuid)),
            "total": memory.total, "used": memory.used, "free": memory.free,
            "v2": [memory_v2.total, memory_v2.reserved, memory_v2.used, memory_v2.free],
            "gpu": rates.gpu, "memory": rates.memory,
            "compute": {p.pid: p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)},
            "graphics": len(pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle))}

def index_or_error(handle):
    try:
        return pynvml.nvmlDeviceGetIndex(handle)
    except pynvml.NVMLError as error:
        return pynvml.nvmlErrorString(error.value)

try:
    pynvml.nvmlInit()
except pynvml.NVMLError as error:
    print(json.dumps({"error": error.value, "text": pynvml.nvmlErrorString(error.value)}), flush=True)
    sys.exit(0)
first = pynvml.nvmlDeviceGetHandleByIndex(0) if pynvml.nvmlDeviceGetCount() else None
for _ in sys.stdin:
    count = pynvml.nvmlDeviceGetCount()
    print(json.dumps({"driver": pynvml.nvmlSystemGetDriverVersion(), "count": count,
                      "first_now_at": index_or_error(first) if first else None,
                      "devices": [device(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]}), flush=True)
pynvml.nvmlShutdown()
try:
    pynvml.nvmlDeviceGetCount()
except pynvml.NVMLError as error:
    print(json.dumps({"after_shutdown": error.value}), flush=True)
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler (cc) to build the fake libnvidia-ml.so.1")
    if importlib.util.find_spec("pynvml") is None:
        pytest.skip("needs the official NVML binding: pip install nvidia-ml-py")
    return fakegpu.build(tmp_path_factory.mktemp("lib"))


@pytest.fixture
def figures(tmp_path: Path) -> Path:
    (tmp_path / "devices").write_text(DEVICES)
    return tmp_path


class Probe:
    """A process that loaded the fake library through pynvml and reports what it sees on request."""

    def __init__(self, library: Path, figures: Path | None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "BABYSIT_FAKE_NVML"} | {"LD_LIBRARY_PATH": str(library)}
        if figures is not None:
            env["BABYSIT_FAKE_NVML"] = str(figures)
        self.process = subprocess.Popen([sys.executable, "-c", PROBE], env=env, text=True, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE)

    def snapshot(self) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        seen: dict[str, Any] = json.loads(self.process.stdout.readline())
        return seen

    def close(self) -> list[dict[str, Any]]:
        """What it says after its last snapshot: its shutdown, or why it could not start."""
        out, _ = self.process.communicate(timeout=30)
        assert self.process.returncode == 0
        return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def probe(library: Path, figures: Path) -> Iterator[Probe]:
    started = Probe(library, figures)
    yield started
    started.close()


def test_devices_memory_and_a_live_process(probe: Probe, figures: Path) -> None:
    fakegpu.allocate(figures, A100, 3 * GiB)  # this test's own process: alive
    seen = probe.snapshot()
    assert seen["driver"].endswith("-fake") and seen["count"] == 2
    a100, h100 = seen["devices"]
    assert (a100["index"], a100["minor"], a100["uuid"], a100["name"]) == (0, 0, A100, "NVIDIA A100-SXM4-80GB")
    assert (h100["index"], h100["minor"], h100["uuid"], h100["name"]) == (1, 1, H100, "NVIDIA H100 NVL")
    assert (a100["same_by_uuid"], h100["same_by_uuid"]) == (0, 1)
    assert (a100["total"], a100["used"], a100["free"]) == (80 * GiB, 4 * GiB, 76 * GiB)  # 1 GiB other + 3 ours
    assert a100["v2"] == [80 * GiB, 0, 4 * GiB, 76 * GiB]
    assert (h100["total"], h100["used"], h100["free"]) == (94 * GiB, 0, 94 * GiB)
    assert (a100["gpu"], a100["memory"], h100["gpu"]) == (37, 37, 0)
    assert a100["compute"] == {str(os.getpid()): 3 * GiB} and h100["compute"] == {}
    assert a100["graphics"] == h100["graphics"] == 0


def test_the_driver_frees_a_dead_processes_memory(probe: Probe, figures: Path) -> None:
    reaped = subprocess.Popen(["true"])
    reaped.wait()
    fakegpu.allocate(figures, A100, 5 * GiB, pid=reaped.pid)
    unreaped = subprocess.Popen(["sleep", "60"])
    fakegpu.allocate(figures, A100, 7 * GiB, pid=unreaped.pid)
    assert probe.snapshot()["devices"][0]["compute"] == {str(unreaped.pid): 7 * GiB}
    unreaped.kill()  # a zombie until waited for: its memory is freed all the same
    wait_for(lambda: ") Z " in Path(f"/proc/{unreaped.pid}/stat").read_text(), what="a zombie")
    a100 = probe.snapshot()["devices"][0]
    assert (a100["used"], a100["compute"]) == (GiB, {})
    unreaped.wait()


def test_figures_are_read_again_on_every_call(probe: Probe, figures: Path) -> None:
    assert probe.snapshot()["devices"][0]["used"] == GiB
    (figures / "devices").write_text(DEVICES.replace(f" {GiB} 37 ", f" {2 * GiB} 90 "))
    fakegpu.allocate(figures, H100, GiB)
    a100, h100 = probe.snapshot()["devices"]
    assert (a100["used"], a100["gpu"], h100["used"], h100["compute"]) == (2 * GiB, 90, GiB, {str(os.getpid()): GiB})
    (figures / "devices").write_text("\n".join(reversed(DEVICES.splitlines())) + "\n")
    seen = probe.snapshot()
    assert seen["first_now_at"] == 1  # a handle follows its GPU, not the line it was on
    (figures / "devices").write_text("")
    assert (probe.snapshot()["count"], probe.snapshot()["first_now_at"]) == (0, "GPU is lost")


def test_calls_after_the_last_shutdown_are_uninitialized(library: Path, figures: Path) -> None:
    assert Probe(library, figures).close() == [{"after_shutdown": NVML_ERROR_UNINITIALIZED}]


@pytest.mark.parametrize("unset", [True, False], ids=["no-BABYSIT_FAKE_NVML", "no-devices-file"])
def test_a_host_without_the_driver(library: Path, tmp_path: Path, unset: bool) -> None:
    failed = Probe(library, None if unset else tmp_path).close()  # tmp_path: an empty directory
    assert failed == [{"error": NVML_ERROR_DRIVER_NOT_LOADED, "text": "Driver Not Loaded"}]


def test_a_malformed_devices_file_fails_loudly_not_as_a_missing_gpu(library: Path, tmp_path: Path) -> None:
    (tmp_path / "devices").write_text(DEVICES + f"GPU-0 {GiB} 0 50\n")  # no name
    assert Probe(library, tmp_path).close() == [{"error": NVML_ERROR_UNKNOWN, "text": "Unknown Error"}]


def test_an_empty_devices_file_is_a_driver_with_no_gpus(library: Path, tmp_path: Path) -> None:
    (tmp_path / "devices").write_text("")
    probe = Probe(library, tmp_path)
    assert probe.snapshot()["count"] == 0
    probe.close()


def test_build_compiles_only_when_the_source_is_newer(library: Path) -> None:
    built = (library / "libnvidia-ml.so.1").stat().st_mtime_ns
    assert fakegpu.build(library) == library
    assert (library / "libnvidia-ml.so.1").stat().st_mtime_ns == built


def test_hog_holds_memory_on_its_visible_gpu_and_can_grow(probe: Probe, figures: Path) -> None:
    env = os.environ | {"BABYSIT_FAKE_NVML": str(figures), "CUDA_VISIBLE_DEVICES": f"{H100},{A100}"}
    hog = subprocess.Popen([sys.executable, str(HOG), str(GiB), "30", "--grow-to", str(3 * GiB), "--grow-after",
                            "0.5"], env=env, text=True, stdout=subprocess.PIPE)
    assert hog.stdout is not None
    assert hog.stdout.readline().startswith(f"hog {hog.pid}: allocated {GiB} bytes on {H100}")
    assert probe.snapshot()["devices"][1]["compute"] == {str(hog.pid): GiB}
    assert hog.stdout.readline().startswith(f"hog {hog.pid}: grew to {3 * GiB} bytes")
    assert probe.snapshot()["devices"][1]["used"] == 3 * GiB
    hog.terminate()
    assert hog.wait(timeout=10) == -signal.SIGTERM
    hog.stdout.close()
    assert not (figures / "procs" / str(hog.pid)).exists()


def test_hog_without_a_visible_gpu_fails_as_cuda_does(figures: Path) -> None:
    env = os.environ | {"BABYSIT_FAKE_NVML": str(figures), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(HOG), "1"], env=env, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stderr.strip()) == (1, "CUDA error: no CUDA-capable device is detected")


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.01)


BABYSITS_VIEW = """
import json, os, sys
if os.environ.get("NO_BINDING"):
    sys.modules["pynvml"] = None  # as if nvidia-ml-py were not installed: its import fails
from babysit.common.nvml import Nvml
nvml = Nvml()
print(json.dumps({"why": nvml.why(), "gpus": [[g.index, g.uuid, g.name, g.minor, g.total_bytes, g.used_bytes,
                  g.utilization_pct, {str(k): v for k, v in g.processes.items()}] for g in nvml.read()]}))
"""


def babysits_view(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", BABYSITS_VIEW], env=env, capture_output=True, text=True, timeout=60,
                          check=True)
    return json.loads(done.stdout)


def test_babysit_reads_devices_and_processes_through_the_binding(library: Path, figures: Path) -> None:
    fakegpu.allocate(figures, H100, 2 * GiB)  # this test's own process
    env = {**os.environ, "LD_LIBRARY_PATH": str(library), "BABYSIT_FAKE_NVML": str(figures)}
    seen = babysits_view(env)
    assert seen["why"] == "" and seen["gpus"] == [
        [0, A100, "NVIDIA A100-SXM4-80GB", 0, 80 * GiB, GiB, 37.0, {}],
        [1, H100, "NVIDIA H100 NVL", 1, 94 * GiB, 2 * GiB, 0.0, {str(os.getpid()): 2 * GiB}]]
    no_driver = babysits_view({k: v for k, v in env.items() if k != "LD_LIBRARY_PATH"})
    assert no_driver["gpus"] == [] and no_driver["why"].startswith("none: NVML cannot start"), no_driver
    # no binding: ping names the binding where NVIDIA's driver is loaded, and the driver where it is not
    driver = Path("/proc/driver/nvidia").exists()
    assert babysits_view({**env, "NO_BINDING": "1"})["why"] == (
        "none: the NVML binding is not installed (pip install 'babysit[gpu]')" if driver
        else "none: no NVIDIA driver on this host")
    (figures / "devices").write_text("")
    assert babysits_view(env)["why"] == "none: NVML runs and shows no device"
