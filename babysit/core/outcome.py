"""How a unit's end, as systemd reports it, becomes a task's terminal state."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from babysit.core.protocol import KillReason, State
from babysit.core.task import Outcome, Usage

# si_code of the main process's end (ExecMainCode), from waitid(2)
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
EXIT_CODES = {"exited": CLD_EXITED, "killed": CLD_KILLED, "dumped": CLD_DUMPED}


@dataclass(frozen=True)
class FinalAccounting:
    """How the unit ended and what it used in all, as the kernel counted it (None: not available here)."""

    result: str  # systemd's SERVICE_RESULT: success, exit-code, signal, core-dump, timeout, oom-kill, ...
    exit_code: str  # exited, killed, dumped
    exit_status: int | None  # the exit status, or the signal's number
    peak_mem_bytes: int | None
    cpu_ns: int | None
    mem_failcnt: int | None
    oom_kills: int | None
    manager_state: str = ""  # the user manager's state when a signal ended the task ("stopping": it stopped it)


@dataclass(frozen=True)
class UnitEnd:
    """The properties of a unit that tell how it ended."""

    active_state: str
    sub_state: str
    result: str
    exec_main_code: int
    exec_main_status: int
    manager_stopping: bool = False  # the user manager was stopping when a signal ended the task

    @classmethod
    def from_properties(cls, props: Mapping[str, Any]) -> UnitEnd:
        return cls(props.get("ActiveState", ""), props.get("SubState", ""), props.get("Result", ""),
                   int(props.get("ExecMainCode", 0)), int(props.get("ExecMainStatus", 0)))

    @classmethod
    def of(cls, props: Mapping[str, Any], final: FinalAccounting | None) -> UnitEnd:
        """From the unit's properties, corrected by its final accounting, which was written at the end."""
        end = cls.from_properties(props)
        if not tells_the_exit(final):
            return end
        return cls(end.active_state, end.sub_state, final.result or end.result, EXIT_CODES[final.exit_code],
                   final.exit_status if final.exit_status is not None else end.exec_main_status,
                   final.manager_state == "stopping")


def tells_the_exit(final: FinalAccounting | None) -> TypeGuard[FinalAccounting]:
    """Whether a final record says how the main process ended (then systemd need not be asked)."""
    return final is not None and final.exit_code in EXIT_CODES and final.exit_status is not None


def has_ended(props: Mapping[str, Any], started: bool) -> bool:
    """Whether a task unit's (merged) properties show its command is over.

    A fresh transient unit is briefly `inactive` before it starts, hence `started`.
    """
    state = props.get("ActiveState")
    return state == "failed" or props.get("SubState") == "exited" or (started and state == "inactive")


def oom_evidence(oom_kills: int, failcnt: int, peak_bytes: int, memory_max_bytes: int) -> bool:
    """cgroup v1 has no oom-kill result: with a SIGKILL, an OOM kill counted, the limit hit, or the
    peak at the limit means the kernel's OOM killer acted at MemoryMax."""
    at_limit = memory_max_bytes > 0 and peak_bytes >= memory_max_bytes * 0.98
    return oom_kills > 0 or failcnt > 0 or at_limit


def classify(end: UnitEnd, kill_requested: KillReason | None, oom_seen: bool = False) -> Outcome:
    """The terminal outcome: a stop babysit asked for wins; then systemd's and the kernel's kills;
    then the exit. `oom_seen` is the cgroup v1 evidence (see oom_evidence)."""
    code, status = end.exec_main_code, end.exec_main_status
    exit_code = status if code == CLD_EXITED else None
    sig = status if code in (CLD_KILLED, CLD_DUMPED) else None
    if kill_requested:
        return Outcome(State.KILLED, exit_code, sig, kill_requested)
    if end.result == "timeout":
        return Outcome(State.KILLED, exit_code, sig, KillReason.TIMEOUT, "RuntimeMaxSec reached")
    if end.result == "oom-kill" or (oom_seen and sig == signal.SIGKILL):
        return Outcome(State.KILLED, exit_code, sig, KillReason.OOM, "the kernel's OOM killer ended it at MemoryMax")
    if sig is not None and end.manager_stopping:
        return Outcome(State.UNKNOWN, None, sig, None, "systemd stopped it because the user manager was stopping "
                       "(a shutdown or reboot, a logout without lingering, or a restart of user@.service); "
                       "whether it would have finished is not known")
    if code == CLD_EXITED and status in SYSTEMD_EXIT_STEPS:
        return Outcome(State.FAILED, exit_code, None, None, systemd_step_failed(status))
    if code == CLD_EXITED:
        return Outcome(State.COMPLETED if status == 0 else State.FAILED, exit_code)
    if sig is not None:
        return Outcome(State.FAILED, None, sig, None, f"killed by {signal_name(sig)}")
    if end.result in ("exit-code", "resources", "start-limit-hit"):
        return Outcome(State.FAILED, None, None, None, f"systemd result {end.result}: the command could not start")
    return Outcome(State.UNKNOWN, None, None, None, f"systemd reported {end.active_state}/{end.sub_state}, "
                                                    f"result {end.result or 'none'}, without an exit status")


# systemd's own exit statuses for a step that failed before the command ran (systemd.exec(5))
SYSTEMD_EXIT_STEPS = {
    200: ("CHDIR", "changing to the working directory (--cwd): it is missing or not enterable"),
    201: ("NICE", "setting the nice level"), 202: ("FDS", "closing file descriptors"),
    203: ("EXEC", "executing the command: /bin/bash is missing or not executable"),
    204: ("MEMORY", "allocating memory"), 205: ("LIMITS", "setting resource limits"),
    206: ("OOM_ADJUST", "setting the OOM score"), 207: ("SIGNAL_MASK", "setting the signal mask"),
    208: ("STDIN", "setting up standard input"), 209: ("STDOUT", "connecting standard output to the journal"),
    210: ("CHROOT", "changing the root directory"), 211: ("IOPRIO", "setting the I/O priority"),
    212: ("TIMERSLACK", "setting the timer slack"), 213: ("SECUREBITS", "setting the secure bits"),
    214: ("SETSCHEDULER", "setting the CPU scheduler"), 215: ("CPUAFFINITY", "setting the CPU affinity"),
    216: ("GROUP", "setting the group"), 217: ("USER", "setting the user"),
    218: ("CAPABILITIES", "dropping capabilities"), 219: ("CGROUP", "joining the unit's cgroup"),
    220: ("SETSID", "creating a session"), 221: ("CONFIRM", "waiting for confirmation"),
    222: ("STDERR", "connecting standard error to the journal"), 224: ("PAM", "setting up PAM"),
    225: ("NETWORK", "setting up the network namespace"), 226: ("NAMESPACE", "setting up mount namespaces"),
    227: ("NO_NEW_PRIVILEGES", "disabling new privileges"), 228: ("SECCOMP", "setting the system call filter"),
    229: ("SELINUX_CONTEXT", "setting the SELinux context"), 230: ("PERSONALITY", "setting the personality"),
    231: ("APPARMOR_PROFILE", "setting the AppArmor profile"),
    232: ("ADDRESS_FAMILIES", "restricting address families"),
    233: ("RUNTIME_DIRECTORY", "creating the runtime directory"), 235: ("CHOWN", "changing socket ownership"),
    236: ("SMACK_PROCESS_LABEL", "setting the SMACK label"), 237: ("KEYRING", "setting up the kernel keyring"),
    238: ("STATE_DIRECTORY", "creating the state directory"), 239: ("CACHE_DIRECTORY", "creating the cache directory"),
    240: ("LOGS_DIRECTORY", "creating the logs directory"),
    241: ("CONFIGURATION_DIRECTORY", "creating the configuration directory"),
    242: ("NUMA_POLICY", "setting the NUMA policy"), 243: ("CREDENTIALS", "setting up credentials"),
}


def systemd_step_failed(status: int) -> str:
    """The detail for one of systemd's exit statuses, in words."""
    step, doing = SYSTEMD_EXIT_STEPS[status]
    return (f"systemd could not start the command: step {step} failed ({doing}); exit status {status} is "
            "systemd's code for it, unless the command itself exited with it")


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def final_usage(sampled: Usage, final: FinalAccounting | None, oom: bool, memory_max_bytes: int) -> Usage:
    """A finished run's figures: the kernel's totals at the end where they were read, else the samples.

    An OOM kill at MemoryMax means the cgroup held MemoryMax's worth, whatever was sampled before.
    """
    peak, cpu_seconds = sampled.peak_mem_bytes, sampled.cpu_seconds
    if final and final.peak_mem_bytes is not None:
        peak = max(peak or 0, final.peak_mem_bytes)
    if oom:
        peak = max(peak or 0, memory_max_bytes)
    if final and final.cpu_ns is not None:
        cpu_seconds = final.cpu_ns / 1e9
    # the last CPU rate sampled stays: a cpu_2x_sustained kill's hint cites it (NVML keeps no GPU total either)
    return Usage(0, peak, cpu_seconds, sampled.cpu_cores, peak_gpu_mem_bytes=sampled.peak_gpu_mem_bytes)
