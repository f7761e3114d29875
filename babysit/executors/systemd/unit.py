"""How a task becomes a transient systemd unit, and back: its properties (plain values; manager.py types
them), and a unit read back into a task's spec and caps when babysit has no record of it."""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from babysit.core.gpus import Gpu, visible_devices
from babysit.core.protocol import SLICE, log_identifier
from babysit.core.task import Buffering, Caps, Host, Task, TaskSpec, is_exported_function, spec_from_wire, split_env
from babysit.executors.systemd.fence import fence_properties

USEC = 1_000_000
ENV = "/usr/bin/env"  # coreutils' env(1)


ESTIMATE_KEYS = ("time_s", "mem_bytes", "cpu_cores", "kill_timeout_s", "observability_interval_s")
DESCRIPTION = re.compile(r"babysit task (?P<name>\S+) \(#(?P<run_id>\d+)\)(?:: (?P<fields>.*))?")


@dataclass(frozen=True)
class Described:
    """What a task unit's Description tells babysit: whose run it is, and with which estimates."""

    name: str
    run_id: int
    fields: dict[str, float]  # ESTIMATE_KEYS and the two caps' percentages, where present


def description(task: Task) -> str:
    """The unit's Description: the run's id (to tell it from an older run's unit) and its estimates, so a
    unit can be taken up again even when babysit's own records are lost."""
    e, spec = task.spec.estimates, task.spec
    values = {**{k: getattr(e, k) for k in ESTIMATE_KEYS}, "mem_pct_limit": spec.mem_pct_limit,
              "cpu_pct_limit": spec.cpu_pct_limit}
    return f"babysit task {spec.name} (#{task.id}): " + " ".join(f"{k}={v:.15g}" for k, v in values.items())


def parse_description(text: str) -> Described | None:
    """The inverse of `description`; None for a unit babysit did not start."""
    match = DESCRIPTION.fullmatch(text or "")
    if not match:
        return None
    fields = {}
    for pair in (match["fields"] or "").split():
        key, _, value = pair.partition("=")
        try:
            fields[key] = float(value)
        except ValueError:
            return None
    return Described(match["name"], int(match["run_id"]), fields)


def no_expansion(word: str) -> str:
    """An argv word as systemd must get it so that it reaches the process unchanged: systemd expands
    `${VAR}` (and a lone `$VAR`) from the unit's environment itself, before bash could, unless `$` is
    doubled."""
    return word.replace("$", "$$")


def exec_start(spec: TaskSpec, stdbuf: str | None) -> tuple[str, list[str], bool]:
    """`bash -c CMD`, behind coreutils' stdbuf unless the task wants its programs' own buffering.

    C stdio block-buffers a pipe, so a native logger (LightGBM, XGBoost, most C/C++ tools) would look
    silent for minutes and be killed as stalled; stdbuf preloads a library that makes stdout of every
    dynamically linked program the task starts line-buffered. It execs bash: the main process is the same.
    """
    bash = ["/bin/bash", "-c", no_expansion(spec.command)]
    _, functions = split_env(spec.env)
    if functions:  # bash imports them from its environment, where env(1) can put names no unit takes
        bash = [ENV, *(no_expansion(f"{k}={v}") for k, v in functions.items()), *bash]
    if spec.buffering == Buffering.LINE and stdbuf:
        return (stdbuf, [stdbuf, "-oL", *bash], False)
    return (bash[0], bash, False)


def unit_command(argv: list[str]) -> str:
    """The task's shell command, read back from its unit's ExecStart (the inverse of `exec_start`)."""
    after = argv.index("-c") + 1 if "-c" in argv else len(argv)
    return argv[after].replace("$$", "$") if after < len(argv) else ""


def start_properties(task: Task, stop_grace_s: float, stop_post: tuple[str, list[str], bool],
                     stdbuf: str | None, output: str | None = None, host_gpus: Sequence[Gpu] = (),
                     private_dev: bool = False) -> dict[str, Any]:
    """Everything StartTransientUnit sets for a task (SPEC 'Caps applied to each unit'); its output goes to
    the journal, or to the file `output` where journald keeps none the user can read."""
    spec = task.spec
    env = split_env(spec.env)[0] | gpu_env(task, host_gpus)
    return {
        "Description": description(task),
        "ExecStart": [exec_start(spec, stdbuf)],
        "WorkingDirectory": spec.cwd,
        "Environment": [f"{k}={v}" for k, v in env.items()],
        **fence_properties(task.gpus, host_gpus, private_dev),  # see fence.py
        "Slice": SLICE,
        # the final accounting (see babysit.accounting), which also outlives the unit for a daemon that
        # was down when it ended
        "ExecStopPost": [stop_post],
        "KillMode": "control-group",
        "KillSignal": int(signal.Signals[spec.stopping.signal]),
        "TimeoutStopUSec": int(spec.stopping.grace(stop_grace_s) * USEC),
        "MemoryAccounting": True,
        "CPUAccounting": True,
        "TasksAccounting": True,
        **({"StandardOutputFileToAppend": output, "StandardErrorFileToAppend": output} if output else
           {"StandardOutput": "journal", "StandardError": "journal"}),
        "SyslogIdentifier": log_identifier(spec.name),  # see protocol.output_matches
        # babysitd's reference keeps the ended unit loaded until it let go of it (release): how it ended is
        # read from systemd even where the final accounting could not be written (a full disk)
        "AddRef": True,
        # no LogRateLimit*: journald honours them for system units only (babysitd warns about its own limit)
        **cap_properties(task.caps),
        "RuntimeMaxUSec": int(task.caps.runtime_max_s * USEC),
    }


def gpu_env(task: Task, host_gpus: Sequence[Gpu]) -> dict[str, str]:
    """The devices a task was given, as CUDA names them; on a host with GPUs, a task given none sees none (an
    empty CUDA_VISIBLE_DEVICES), as under Slurm's gres: a GPU admission did not count is not used."""
    return {"CUDA_VISIBLE_DEVICES": visible_devices(task.gpus)} if task.gpus or host_gpus else {}


def cap_properties(caps: Caps) -> dict[str, Any]:
    """The cgroup caps, which SetUnitProperties can also change on a running unit."""
    return {
        "MemoryMax": caps.memory_max_bytes,
        "CPUQuotaPerSecUSec": int(caps.cpu_quota_pct / 100 * USEC),
    }


def spec_of_unit(described: Described, props: Mapping[str, Any], host: Host) -> TaskSpec:
    """A task's spec, read back from its unit: the command, directory and environment systemd has, and the
    estimates its Description carries."""
    argv: list[str] = next((argv for _path, argv, *_ in props.get("ExecStart", [])), [])
    f = described.fields
    env = dict(v.split("=", 1) for v in props.get("Environment", []) if "=" in v)
    env |= {k: v for k, _, v in (arg.replace("$$", "$").partition("=") for arg in argv) if is_exported_function(k, v)}
    wire = {"name": described.name, "command": unit_command(argv), "cwd": props.get("WorkingDirectory") or "~",
            "env": env,
            "estimated_time": f.get("time_s"), "kill_timeout": f.get("kill_timeout_s"),
            "observability_interval": f.get("observability_interval_s"),
            "estimated_mem_bytes": f.get("mem_bytes"), "estimated_cpu_cores": f.get("cpu_cores"),
            "mem_pct_limit": f.get("mem_pct_limit"), "cpu_pct_limit": f.get("cpu_pct_limit")}
    return spec_from_wire({k: v for k, v in wire.items() if v is not None}, host)


def caps_of_unit(described: Described, props: Mapping[str, Any], host: Host) -> Caps:
    """The caps systemd enforces on a unit, as they are (the host or the config may have changed)."""
    f = described.fields
    return Caps(mem_limit_bytes=int(host.mem_bytes * f.get("mem_pct_limit", 100) / 100),
                cpu_limit_cores=host.cores * f.get("cpu_pct_limit", 100) / 100,
                memory_max_bytes=int(props.get("MemoryMax", 0)),
                cpu_quota_pct=props.get("CPUQuotaPerSecUSec", 0) / USEC * 100,
                runtime_max_s=props.get("RuntimeMaxUSec", 0) / USEC)
