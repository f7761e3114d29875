import pytest

from babysit.core.capacity import Reservation, Room, capacity_report, decide, fits, refusal
from babysit.core.protocol import InvalidArgument
from babysit.core.task import GiB, Host

HOST = Host(mem_bytes=16 * GiB, cores=4)
PLENTY = 64 * GiB


@pytest.mark.parametrize("free, running, queued, mem, cpu, admit, reason", [
    # an idle host admits any task within the caps
    (PLENTY, [], [], 6 * GiB, 3.6, True, ""),
    # reservations of running tasks count, whatever they use now
    (PLENTY, [Reservation("a", 12 * GiB, 1)], [], 6 * GiB, 1, False, "not enough memory"),
    (PLENTY, [Reservation("a", 8 * GiB, 1)], [], 8 * GiB, 1, True, ""),
    (PLENTY, [Reservation("a", 1 * GiB, 3)], [], 1 * GiB, 2, False, "not enough CPU"),
    # a CPU estimate above the core count reserves all cores, and asks for all of them
    (PLENTY, [Reservation("a", 1 * GiB, 16)], [], 1 * GiB, 0.5, False, "not enough CPU"),
    (PLENTY, [], [], 1 * GiB, 16, True, ""),
    # never more than the memory actually free, once running tasks grow to their estimates
    (5 * GiB, [], [], 6 * GiB, 1, False, "not enough memory"),
    (9 * GiB, [Reservation("a", 4 * GiB, 1, mem_used_bytes=1 * GiB)], [], 6 * GiB, 1, True, ""),
    (8 * GiB, [Reservation("a", 4 * GiB, 1, mem_used_bytes=1 * GiB)], [], 6 * GiB, 1, False, "not enough memory"),
    # queued tasks go first
    (PLENTY, [], ["b"], 1 * GiB, 1, False, "1 queued task(s) go first"),
    # both short at once
    (PLENTY, [Reservation("a", 15 * GiB, 4)], [], 2 * GiB, 1, False, "not enough memory; not enough CPU"),
])
def test_decide(free: int, running: list, queued: list, mem: int, cpu: float, admit: bool, reason: str) -> None:
    decision = decide(HOST, free, running, Room(mem, cpu), queued)
    assert (decision.admit, decision.reason) == (admit, reason)


@pytest.mark.parametrize("mem, cpu", [(0, 1), (-1, 1), (GiB, 0), (GiB, -2)])
def test_zero_and_negative_estimates_are_invalid(mem: int, cpu: float) -> None:
    with pytest.raises(InvalidArgument):
        decide(HOST, PLENTY, [], Room(mem, cpu))


def test_a_huge_estimate_never_fits() -> None:
    assert not decide(HOST, PLENTY, [], Room(1 << 60, 1)).admit


def test_refusal_names_the_figures_and_the_command() -> None:
    decision = decide(HOST, PLENTY, [Reservation("a", 12 * GiB, 1)], Room(6 * GiB, 1))
    body = refusal("b", decision)
    assert body["error"] == "capacity_exceeded" and body["name"] == "b"
    assert body["requested"] == {"mem_bytes": 6 * GiB, "cpu_cores": 1}
    assert body["available"] == {"mem_bytes": 4 * GiB, "cpu_cores": 3}
    assert body["running"] == [{"name": "a", "mem_bytes": 12 * GiB, "cpu_cores": 1}]
    assert body["hint"].startswith(f"babysit wait_for_capacity --mem_bytes={6 * GiB} --cpu_cores=1,")
    assert "estimates_from" not in body
    learned = refusal("b", decision, "3 earlier runs of b: 6 GiB")
    assert list(learned.items())[-1] == ("estimates_from", "3 earlier runs of b: 6 GiB")
    assert next(iter(learned)) == "error"


def test_a_client_decides_the_same_from_the_report() -> None:
    running = [Reservation("a", 12 * GiB, 1, 2 * GiB)]
    report = capacity_report(HOST, PLENTY, running, [])
    assert report["available_mem_bytes"] == 4 * GiB and report["reserved_cpu_cores"] == 1
    assert fits(report, Room(4 * GiB, 1)) == decide(HOST, PLENTY, running, Room(4 * GiB, 1))
    assert not fits(report, Room(5 * GiB, 1)).admit
