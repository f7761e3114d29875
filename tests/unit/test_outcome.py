import pytest

from babysit.core.outcome import UnitEnd, classify, has_ended
from babysit.core.protocol import KillReason, State


def end(result: str, code: int, status: int, active: str = "failed", sub: str = "failed") -> UnitEnd:
    return UnitEnd(active, sub, result, code, status)


@pytest.mark.parametrize("unit_end, kill, expected", [
    (end("success", 1, 0, "active", "exited"), None, (State.COMPLETED, 0, None, None)),
    (end("exit-code", 1, 3), None, (State.FAILED, 3, None, None)),
    (end("signal", 2, 11), None, (State.FAILED, None, 11, None)),
    (end("timeout", 2, 15), None, (State.KILLED, None, 15, KillReason.TIMEOUT)),
    (end("oom-kill", 2, 9), None, (State.KILLED, None, 9, KillReason.OOM)),
    (end("success", 2, 15, "inactive", "dead"), KillReason.USER, (State.KILLED, None, 15, KillReason.USER)),
    (end("success", 1, 0, "active", "exited"), KillReason.USER, (State.KILLED, 0, None, KillReason.USER)),
    (end("", 0, 0, "inactive", "dead"), None, (State.UNKNOWN, None, None, None)),
])
def test_classify(unit_end: UnitEnd, kill: KillReason | None, expected: tuple) -> None:
    o = classify(unit_end, kill)
    assert (o.state, o.exit_code, o.signal, o.kill_reason) == expected


def test_a_fresh_unit_is_not_over_before_it_started() -> None:
    assert not has_ended({"ActiveState": "inactive"}, started=False)
    assert has_ended({"ActiveState": "inactive"}, started=True)
    assert has_ended({"ActiveState": "active", "SubState": "exited"}, started=False)
    assert has_ended({"ActiveState": "failed"}, started=False)
    assert not has_ended({"ActiveState": "active", "SubState": "running"}, started=True)
