"""Stops that let work be saved, and queue control: parsing, the warning's time, what the result shows."""

from __future__ import annotations

import pytest

from babysit.core import report
from babysit.core.policy import Memory, Observation, evaluate
from babysit.core.protocol import CONTROL_KEYS, InvalidArgument, State, terminal_only
from babysit.core.stopping import Sent, Stopping, parse_signal, parse_warn_signal, stopping_from_json
from babysit.core.task import GiB, Estimates, Host, Task, derive_caps, spec_from_wire, spec_to_wire

HOST = Host(mem_bytes=16 * GiB, cores=4)


@pytest.mark.parametrize("text", ["USR1", "SIGUSR1", "usr1", " sigusr1 ", "10"])
def test_a_signal_is_named_the_way_kill_takes_it(text: str) -> None:
    assert parse_signal(text, "stop_signal") == "SIGUSR1"


@pytest.mark.parametrize(("text", "said"), [
    ("SIGFOO", "is not a signal"), ("", "is not a signal"), ("999", "is not a signal"),
    ("SIGSTOP", "only pauses"), ("CONT", "only pauses"), ("TSTP", "only pauses"),
])
def test_no_signal_or_one_that_only_pauses_is_refused(text: str, said: str) -> None:
    with pytest.raises(InvalidArgument, match=said):
        parse_signal(text, "stop_signal")


def test_the_warning_is_a_signal_and_how_long_before_the_stop() -> None:
    assert parse_warn_signal("SIGUSR1@5m") == ("SIGUSR1", 300.0)
    assert parse_warn_signal("USR2@30s") == ("SIGUSR2", 30.0)
    for bad in ("SIGUSR1", "SIGUSR1@", "@5m", "SIGUSR1@0s", "SIGUSR1@soon"):
        with pytest.raises(InvalidArgument):
            parse_warn_signal(bad)


def test_the_warning_goes_its_time_before_kill_timeout_or_at_the_start_when_that_is_sooner() -> None:
    assert Stopping(warn_signal="SIGUSR1", warn_before_s=30).warn_at(100) == 70
    assert Stopping(warn_signal="SIGUSR1", warn_before_s=300).warn_at(100) == 0
    assert Stopping().warn_at(100) is None
    assert Stopping(grace_s=0).grace(10) == 10 and Stopping(grace_s=45).grace(10) == 45


def test_run_takes_priority_and_the_stop_flags_and_adjust_keeps_them() -> None:
    wire = {"name": "t", "command": "true", "priority": 5, "stop_signal": "INT", "stop_grace": "30s",
            "warn_signal": "SIGUSR1@1m"}
    spec = spec_from_wire(wire, HOST)
    assert (spec.priority, spec.stopping) == (5, Stopping("SIGINT", 30.0, "SIGUSR1", 60.0))
    assert spec_from_wire(spec_to_wire(spec), HOST) == spec
    assert spec_from_wire({"name": "t", "command": "true"}, HOST).stopping == Stopping()
    assert stopping_from_json(None) == Stopping()


@pytest.mark.parametrize(("key", "value"), [("priority", "high"), ("priority", 10**7), ("priority", 1.5),
                                            ("stop_grace", "0s"), ("stop_signal", "SIGSTOP"),
                                            ("warn_signal", "USR1")])
def test_bad_values_are_refused_naming_the_flag(key: str, value: object) -> None:
    with pytest.raises(InvalidArgument, match=key if key != "priority" or value != 1.5 else "wrong type"):
        spec_from_wire({"name": "t", "command": "true", key: value}, HOST)


def test_a_2x_window_opening_is_told_once_so_the_warning_signal_goes_once() -> None:
    est = Estimates(time_s=60, mem_bytes=100, cpu_cores=1, kill_timeout_s=120, observability_interval_s=30)
    opened, memory = [], Memory()
    for at, mem in ((1, 150), (2, 210), (3, 220), (4, 90), (5, 230)):
        verdict = evaluate(Observation(at, mem, 0.1), est, memory, 10)
        memory, opened = verdict.memory, opened + [(at, d) for d in verdict.opened]
    assert opened == [(2, "mem"), (5, "mem")]  # a window that closed and opened again warns again


def test_the_result_lists_the_signals_sent_and_the_stop_settings() -> None:
    spec = spec_from_wire({"name": "t", "command": "true", "priority": 3, "warn_signal": "SIGUSR1@30s",
                           "stop_grace": "1m"}, HOST)
    task = Task(1, spec, derive_caps(spec, HOST), State.KILLED, 0.0, started_at=0.0, finished_at=10.0,
                signals=(Sent("SIGUSR1", 5.0, "kill_timeout in 30s"), Sent("SIGTERM", 8.0, "stop: timeout")))
    shown = terminal_only(report.result(task, 10.0))
    assert {k: shown[k] for k in CONTROL_KEYS if k in shown} == {
        "priority": 3, "stop_grace_s": 60.0, "warn_signal": "SIGUSR1@30s",
        "signals": [{"signal": "SIGUSR1", "at": "1970-01-01T00:00:05.000+00:00", "why": "kill_timeout in 30s"},
                    {"signal": "SIGTERM", "at": "1970-01-01T00:00:08.000+00:00", "why": "stop: timeout"}]}
    plain = spec_from_wire({"name": "t", "command": "true"}, HOST)
    assert not set(CONTROL_KEYS) & set(report.result(Task(2, plain, derive_caps(plain, HOST), State.QUEUED, 0.0), 1))


def test_a_pause_that_used_up_the_backstop_is_told_apart_from_a_kill_timeout() -> None:
    from babysit.core.hints import kill_hint, suggested
    from babysit.core.outcome import Outcome
    from babysit.core.protocol import KillReason

    spec = spec_from_wire({"name": "t", "command": "true", "kill_timeout": "10m"}, HOST)
    caps = derive_caps(spec, HOST)  # the backstop: 2 x 10 min + 60 s after the start
    paused = Task(1, spec, caps, State.RUNNING, 0.0, started_at=100.0, paused_at=160.0, paused_by="freeze")
    assert report.control(paused)["backstop_at"] == "1970-01-01T00:22:40.000+00:00"
    ended = Outcome(State.KILLED, kill_reason=KillReason.TIMEOUT)
    # stopped 5 s before the backstop, after 60 s of running and the rest paused
    cut = paused.with_(state=State.KILLED, outcome=ended, paused_at=None, paused_s=1295.0, finished_at=1400.0,
                       signals=(Sent.stop("SIGTERM", 1355.0, "timeout"),))
    assert kill_hint(cut).startswith("paused for 21m35s, and a pause does not move the backstop"), kill_hint(cut)
    assert suggested(cut) == {} and "backstop_at" not in report.control(cut)
    # resumed in time, it ran its whole kill_timeout: a timeout like any other
    whole = cut.with_(paused_s=60.0, finished_at=780.0, signals=(Sent.stop("SIGTERM", 760.0, "timeout"),))
    assert kill_hint(whole).startswith("ran 10m20s vs estimate") and suggested(whole) == {"estimated_time": "20m40s"}
