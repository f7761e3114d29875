"""How a task is stopped so that it can save its work: the signal and grace of a stop, and a warning signal
sent ahead of a stop babysit can see coming (its kill_timeout, a 2x window), as Slurm's `--signal` does."""

from __future__ import annotations

import signal as signals
from dataclasses import dataclass
from typing import Any

from babysit.core.protocol import InvalidArgument
from babysit.core.quantities import parse_duration

# a stop or warning that cannot reach the task, or that would only pause it, is no stop
NOT_STOPS = frozenset({"SIGSTOP", "SIGCONT", "SIGTSTP", "SIGTTIN", "SIGTTOU"})
STOP = "stop: "  # how a stop is recorded among the signals sent, before its reason


@dataclass(frozen=True)
class Stopping:
    """What a stop of this task sends, and what comes first."""

    signal: str = "SIGTERM"  # --stop_signal: then SIGKILL after the grace
    grace_s: float = 0.0  # --stop_grace; 0: the configured grace
    warn_signal: str = ""  # --warn_signal=SIG@DURATION: SIG ...
    warn_before_s: float = 0.0  # ... this long before a kill_timeout stop

    def grace(self, configured_s: float) -> float:
        return self.grace_s or configured_s

    def warn_at(self, kill_timeout_s: float) -> float | None:
        """Seconds after the start when the warning signal goes (None: no warning asked)."""
        return max(0.0, kill_timeout_s - self.warn_before_s) if self.warn_signal else None


@dataclass(frozen=True)
class Sent:
    """A signal babysit sent a running task, and why: the terminal JSON lists them."""

    signal: str
    at: float  # wall clock
    why: str  # "kill_timeout in 30s", "stop: timeout", ...

    @classmethod
    def stop(cls, signal: str, at: float, reason: str) -> Sent:
        return cls(signal, at, f"{STOP}{reason}")

    @property
    def is_stop(self) -> bool:
        return self.why.startswith(STOP)


def parse_signal(text: str, key: str) -> str:
    """`USR1`, `SIGUSR1`, `usr1` or `10` as `SIGUSR1`; refused if it is no signal, or one that stops nothing."""
    word = text.strip().upper()
    try:
        found = signals.Signals(int(word)) if word.isdigit() else signals.Signals[
            word if word.startswith("SIG") else f"SIG{word}"]
    except (KeyError, ValueError):
        raise InvalidArgument(f"{key}: {text!r} is not a signal (e.g. SIGTERM, SIGINT, SIGUSR1)") from None
    if found.name in NOT_STOPS:
        raise InvalidArgument(f"{key}: {found.name} only pauses a process; pick a signal the task can act on")
    return found.name


def parse_warn_signal(text: str) -> tuple[str, float]:
    """`SIGUSR1@30s`: the signal, and how long before a kill_timeout stop it goes."""
    name, at, before = text.partition("@")
    if not at or not before:
        raise InvalidArgument(f"warn_signal must be SIG@DURATION, e.g. SIGUSR1@5m, not {text!r}")
    seconds = parse_duration(before)
    if not 0 < seconds <= 365 * 86400:
        raise InvalidArgument("warn_signal's duration must be more than 0 and at most 365d")
    return parse_signal(name, "warn_signal"), seconds


def stopping_from_json(data: dict[str, Any] | None) -> Stopping:
    return Stopping(**data) if data else Stopping()
