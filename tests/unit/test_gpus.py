"""GPUs as a resource, from plain figures: who gets which device, why one waits, what it is fenced to, and
when its GPU memory is a runaway."""

from __future__ import annotations

import pytest

from babysit.core import gpus, policy
from babysit.core.capacity import Reservation, Room, assignment, capacity_report, decide, fits, refusal
from babysit.core.hints import kill_hint, suggested
from babysit.core.outcome import Outcome
from babysit.core.protocol import ExceedsCap, InvalidArgument, KillReason, State
from babysit.core.task import GiB, Host, Task, Usage, derive_caps, spec_from_wire, spec_to_wire

A, B = "GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-0000-0000-0000-000000000000"
TWO = (gpus.Gpu(0, A, "Fake H100", 0, 80 * GiB, 1 * GiB), gpus.Gpu(1, B, "Fake H100", 1, 80 * GiB, 0))
HOST = Host(64 * GiB, 16.0, TWO)
PLENTY = 60 * GiB


def ask(count: int, mem: int) -> Room:
    return Room(4 * GiB, 1.0, count, mem)


def test_two_tasks_asking_for_one_gpu_each_get_different_ones() -> None:
    first = decide(HOST, PLENTY, [], ask(1, 10 * GiB), gpus=TWO)
    assert first.admit and assignment(first) == (B,)  # the emptier one first
    second = decide(HOST, PLENTY, [Reservation("a", 4 * GiB, 1, gpus=(B,))], ask(1, 10 * GiB), gpus=TWO)
    assert second.admit and assignment(second) == (A,)
    third = decide(HOST, PLENTY, [Reservation("a", 4 * GiB, 1, gpus=(B,)), Reservation("b", 4 * GiB, 1, gpus=(A,))],
                   ask(1, 10 * GiB), gpus=TWO)
    assert not third.admit and third.reason == "not enough GPUs (0 of 1 free with 10 GiB each)"
    assert refusal("c", third)["requested"] == {"mem_bytes": 4 * GiB, "cpu_cores": 1.0, "gpus": 1,
                                                "gpu_mem_bytes": 10 * GiB}
    assert "--gpus=1 --gpu_mem_bytes=10737418240" in refusal("c", third)["hint"]


def test_memory_other_processes_use_counts_and_a_device_short_of_it_is_passed_over() -> None:
    busy = (gpus.Gpu(0, A, "Fake", 0, 80 * GiB, 75 * GiB), TWO[1])
    decision = decide(HOST, PLENTY, [], ask(1, 10 * GiB), gpus=busy)
    assert assignment(decision) == (B,)
    both = decide(HOST, PLENTY, [], ask(2, 10 * GiB), gpus=busy)
    assert not both.admit and both.available.gpus == 1
    assert gpus.shortfall(busy, (), 2, 10 * GiB).endswith("1 of the others short of memory")


def test_a_request_no_device_could_ever_meet_is_refused_outright() -> None:
    with pytest.raises(ExceedsCap, match="3 GPU"):
        derive_caps(spec_from_wire({"name": "t", "command": "x", "gpus": 3}, HOST), HOST)
    with pytest.raises(ExceedsCap, match="the largest holds 80 GiB"):
        derive_caps(spec_from_wire({"name": "t", "command": "x", "gpus": 1, "estimated_gpu_mem_bytes": "81G"},
                                   HOST), HOST)
    with pytest.raises(ExceedsCap, match="sees none"):
        no_gpus = Host(64 * GiB, 16.0)
        derive_caps(spec_from_wire({"name": "t", "command": "x", "gpus": 1}, no_gpus), no_gpus)
    cluster = Host(64 * GiB, 16.0, None)  # Slurm's gres decides there
    derive_caps(spec_from_wire({"name": "t", "command": "x", "gpus": 8}, cluster), cluster)
    assert decide(cluster, PLENTY, [], ask(8, GiB), gpus=None).admit


def test_flags_defaults_and_the_wire() -> None:
    spec = spec_from_wire({"name": "t", "command": "x", "gpus": 2}, HOST)
    assert (spec.estimates.gpus, spec.estimates.gpu_mem_bytes) == (2, 4 * GiB)
    small = Host(64 * GiB, 16.0, (gpus.Gpu(0, A, "Small", 0, 2 * GiB, 0),))
    assert spec_from_wire({"name": "t", "command": "x", "gpus": 1}, small).estimates.gpu_mem_bytes == 2 * GiB
    assert spec_from_wire(spec_to_wire(spec), HOST) == spec
    assert "gpus" not in spec_to_wire(spec_from_wire({"name": "t", "command": "x"}, HOST))
    for wrong in ({"gpus": 1.5}, {"gpus": -1}, {"estimated_gpu_mem_bytes": "2G"}):
        with pytest.raises(InvalidArgument):
            spec_from_wire({"name": "t", "command": "x", **wrong}, HOST)


def test_a_task_is_fenced_to_its_devices_and_the_control_nodes() -> None:
    allowed = dict(gpus.device_allow(TWO, (B,)))
    assert allowed == {"/dev/nvidiactl": "rw", "/dev/nvidia-uvm": "rw", "/dev/nvidia-uvm-tools": "rw",
                       "/dev/nvidia-modeset": "rw", "/dev/nvidia1": "rw"}
    assert gpus.visible_devices((B, A)) == f"{B},{A}"


def test_a_tasks_use_is_its_own_processes_on_its_own_devices() -> None:
    shared = (gpus.Gpu(0, A, "F", 0, 80 * GiB, 30 * GiB, 90.0, {10: 6 * GiB, 11: 2 * GiB, 99: 20 * GiB}),
              gpus.Gpu(1, B, "F", 1, 80 * GiB, 3 * GiB, 50.0, {12: 3 * GiB}))
    use = gpus.use(shared, (A, B), {10, 11, 12})
    assert (use.mem_bytes, use.utilization_pct) == (8 * GiB, 70.0)  # its busiest device; the mean utilisation
    assert gpus.use(shared, (B,), {10, 11}).mem_bytes == 0  # not its device
    assert gpus.use(shared, (), {10}) == gpus.GpuUse()


def test_gpu_memory_past_its_estimate_warns_and_twice_it_for_the_window_kills() -> None:
    spec = spec_from_wire({"name": "t", "command": "x", "gpus": 1, "estimated_gpu_mem_bytes": "1G"}, HOST)
    e, memory = spec.estimates, policy.Memory()
    over = policy.evaluate(policy.Observation(0.0, 1, 0.1, int(1.5 * GiB)), e, memory, 2.0)
    assert [(r.dim, r.ratio) for r in over.risks] == [("gpu_mem", 1.5)] and over.kill is None
    twice = policy.evaluate(policy.Observation(1.0, 1, 0.1, 2 * GiB), e, over.memory, 2.0)
    assert twice.opened == ("gpu_mem",) and twice.kill is None
    killed = policy.evaluate(policy.Observation(3.0, 1, 0.1, 2 * GiB), e, twice.memory, 2.0)
    assert killed.kill == KillReason.GPU_MEM_2X_SUSTAINED
    plain = spec_from_wire({"name": "t", "command": "x"}, HOST).estimates  # no GPUs: no GPU dimension
    assert not policy.evaluate(policy.Observation(0.0, 1, 0.1, 9 * GiB), plain, memory, 2.0).risks
    task = Task(1, spec, derive_caps(spec, HOST), State.KILLED, 0.0, started_at=0.0, finished_at=9.0,
                usage=Usage(gpu_mem_bytes=2 * GiB, peak_gpu_mem_bytes=int(2.5 * GiB)), gpus=(A,),
                outcome=Outcome(State.KILLED, kill_reason=KillReason.GPU_MEM_2X_SUSTAINED))
    assert suggested(task) == {"estimated_gpu_mem_bytes": "3G"}
    assert kill_hint(task).startswith("GPU memory peaked at 2.5 GiB vs estimate 1 GiB per GPU")


def test_the_capacity_report_shows_each_device_and_who_holds_it_and_a_client_decides_alike() -> None:
    running = [Reservation("a", 4 * GiB, 1, gpus=(B,))]
    report = capacity_report(HOST, PLENTY, running, [], TWO)
    assert [(g["uuid"], g["held_by"], g["free_bytes"]) for g in report["gpus"]] == [(A, "", 79 * GiB), (B, "a", 80 * GiB)]
    assert report["available_gpus"] == 1 and report["running"][0]["gpus"] == [B]
    assert fits(report, ask(1, GiB)) == decide(HOST, PLENTY, running, ask(1, GiB), gpus=TWO)
    assert not fits(report, ask(2, GiB)).admit
    assert "gpus" not in capacity_report(HOST, PLENTY, [], [])
    busy = (gpus.Gpu(0, A, "F", 0, 80 * GiB, 5 * GiB, 0.0, {42: 5 * GiB}),)
    assert capacity_report(HOST, PLENTY, [], [], busy)["gpus"][0]["processes"] == [{"pid": 42, "used_bytes": 5 * GiB}]


def test_a_runs_gpu_peak_outlives_its_end_and_is_learnt_from() -> None:
    from babysit.core.history import Kin, learn, past_run
    from babysit.core.outcome import final_usage

    assert final_usage(Usage(peak_gpu_mem_bytes=5 * GiB), None, False, 0).peak_gpu_mem_bytes == 5 * GiB
    spec = spec_from_wire({"name": "t", "command": "x", "gpus": 1}, HOST)
    runs = tuple(past_run(Task(i, spec, derive_caps(spec, HOST), State.COMPLETED, 0.0, started_at=0.0,
                               finished_at=60.0, usage=Usage(peak_gpu_mem_bytes=peak), gpus=(A,)), None)
                 for i, peak in enumerate((10 * GiB, 12 * GiB), 1))
    learned = learn(Kin(runs, "of t"), 32 * GiB, 8.0, 80 * GiB)
    assert learned.gpu_mem_bytes is not None and 12 * GiB < learned.gpu_mem_bytes <= 15 * GiB
    assert learned.wire()["estimated_gpu_mem_bytes"] == learned.gpu_mem_bytes
    assert learn(Kin(runs, "of t"), 32 * GiB, 8.0, 8 * GiB).gpu_mem_bytes == 8 * GiB  # never past the largest GPU
    assert "per GPU" in learned.said(["estimated_gpu_mem_bytes"])


def test_the_fence_binds_only_its_gpus_nodes_into_a_private_dev() -> None:
    from babysit.executors.systemd.fence import fence_properties

    fenced = fence_properties((B,), TWO, private_dev=True)
    assert fenced["DevicePolicy"] == "closed" and ("/dev/nvidia1", "rw") in fenced["DeviceAllow"]
    assert (fenced["PrivateUsers"], fenced["PrivateDevices"]) == (True, True)
    bound = [source for source, target, missing_ok, _ in fenced["BindPaths"] if source == target and missing_ok]
    assert "/dev/nvidia1" in bound and "/dev/nvidia0" not in bound and "/dev/nvidiactl" in bound
    assert "PrivateDevices" not in fence_properties((B,), TWO, private_dev=False)  # the host cannot: ping says so
    assert fence_properties((), TWO, private_dev=True) == {}


def test_the_timeline_keeps_gpu_memory_peaks_and_reads_points_stored_before_gpus() -> None:
    from babysit.core.timeline import Timeline

    timeline = Timeline().add(0.2, 10, 0.5, None, 3 * GiB).add(0.7, 10, 0.5, None, GiB).add(1.5, 10, 0.5, None, 0)
    assert timeline.as_dict(gpus=True)["gpu_mem_bytes"] == [3 * GiB, 0]  # the span's peak, not its last
    assert "gpu_mem_bytes" not in timeline.as_dict()
    old = {"step_s": 1.0, "points": [[0.0, 10, 0.5, 1, None]]}  # as a store written before GPUs keeps it
    assert Timeline.from_json(old).as_dict(gpus=True)["gpu_mem_bytes"] == [0]
    assert Timeline.from_json(timeline.to_json()) == timeline


def test_one_nvml_error_does_not_empty_the_gpu_list() -> None:
    """A failed read of one device (or of the count) kept no GPU at all: every GPU task's admission and
    assignment then saw none. The others are read; that one, and the count, stay as last seen."""
    import types

    from babysit.common import nvml as reader

    class NVMLError(Exception):
        pass

    failing: set[object] = set()

    def call(what: object, value: object) -> object:
        if what in failing:
            raise NVMLError(f"{what} failed")
        return value

    def memory(handle: int) -> object:
        return call(handle, types.SimpleNamespace(total=16 << 30, used=1 << 30))

    binding = types.SimpleNamespace(
        NVMLError=NVMLError, nvmlDeviceGetCount=lambda: call("count", 2),
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetComputeRunningProcesses=lambda h: [], nvmlDeviceGetUUID=lambda h: f"GPU-{h}",
        nvmlDeviceGetName=lambda h: "Stand-in", nvmlDeviceGetMinorNumber=lambda h: h,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=5))
    nvml = reader.Nvml.__new__(reader.Nvml)
    nvml.library, nvml.why_none, nvml.last, nvml.read_at, nvml.said = binding, "", (), -1e9, set()
    assert [g.uuid for g in nvml.read()] == ["GPU-0", "GPU-1"]
    failing.add(1)
    nvml.read_at = -1e9
    assert [g.uuid for g in nvml.read()] == ["GPU-0", "GPU-1"]  # GPU 1 as last seen
    failing.add("count")
    nvml.read_at = -1e9
    assert [g.uuid for g in nvml.read()] == ["GPU-0", "GPU-1"]
