"""How a unit's end, as systemd reports it, becomes a task's terminal state."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from babysit.protocol import KillReason, State
from babysit.task import Outcome

# si_code of the main process's end (ExecMainCode), from waitid(2)
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3


@dataclass(frozen=True)
class UnitEnd:
    """The properties of a unit that tell how it ended."""

    active_state: str
    sub_state: str
    result: str
    exec_main_code: int
    exec_main_status: int

    @classmethod
    def from_properties(cls, props: Mapping[str, Any]) -> UnitEnd:
        return cls(props.get("ActiveState", ""), props.get("SubState", ""), props.get("Result", ""),
                   int(props.get("ExecMainCode", 0)), int(props.get("ExecMainStatus", 0)))


def has_ended(props: Mapping[str, Any], started: bool) -> bool:
    """Whether a task unit's (merged) properties show its command is over.

    Task units have RemainAfterExit=yes, so a success stays loaded as active/exited until babysit has
    stored it; a fresh transient unit is briefly `inactive` before it starts, hence `started`.
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
    if code == CLD_EXITED:
        return Outcome(State.COMPLETED if status == 0 else State.FAILED, exit_code)
    if sig is not None:
        return Outcome(State.FAILED, None, sig, None, f"killed by {signal_name(sig)}")
    if end.result in ("exit-code", "resources", "start-limit-hit"):
        return Outcome(State.FAILED, None, None, None, f"systemd result {end.result}: the command could not start")
    return Outcome(State.UNKNOWN, None, None, None, f"systemd reported {end.active_state}/{end.sub_state}, "
                                                    f"result {end.result or 'none'}, without an exit status")


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
