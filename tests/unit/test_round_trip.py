"""Every value that crosses the wire or the store comes back exactly, over its whole accepted range.

A value babysit writes must be one it reads back: a warning signal written as `1.0368e+06s` once made every
drain, every restart and every retry of its task fail (issue 32).
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from babysit.core.protocol import InvalidArgument, State
from babysit.core.quantities import MAX_DURATION_S, MAX_SIZE, duration_text, parse_duration, parse_size, size_flag
from babysit.core.task import (
    MAX_ENV_BYTES,
    MAX_PRIORITY,
    MAX_STOP_GRACE_S,
    GiB,
    Host,
    clean_env,
    derive_caps,
    spec_from_wire,
    spec_to_wire,
)
from babysit.core.workflow import MAX_INDEX, parse_array
from babysit.daemon.store import Store

HOST = Host(mem_bytes=1 << 62, cores=1 << 20)  # a host no estimate is too big for: the caps are not tested here
durations = st.floats(min_value=0, max_value=MAX_DURATION_S, exclude_min=True, allow_nan=False)
sizes = st.integers(min_value=1, max_value=MAX_SIZE)
signals = st.sampled_from(["SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGKILL"])


@given(durations)
def test_a_duration_babysit_writes_is_read_back_exactly(seconds: float) -> None:
    assert parse_duration(duration_text(seconds)) == seconds


@given(sizes)
def test_a_size_flag_reads_back_no_smaller(size: int) -> None:
    """A hint's figure is rounded up to a readable unit: never below what it read, at most one unit above."""
    assert size <= parse_size(size_flag(size)) < 2 * size + (1 << 10)


@st.composite
def wires(draw: st.DrawFn) -> dict[str, object]:
    """A `Run` dictionary with values anywhere in their accepted ranges."""
    time_s = draw(durations)
    wire: dict[str, object] = {
        "name": "t", "command": "true", "estimated_time": time_s, "kill_timeout": draw(durations),
        "observability_interval": draw(durations), "estimated_mem_bytes": draw(sizes),
        "estimated_cpu_cores": draw(st.floats(min_value=1e-6, max_value=1 << 20)),
        "priority": draw(st.integers(-MAX_PRIORITY, MAX_PRIORITY)), "stop_signal": draw(signals),
        "mem_pct_limit": 100, "cpu_pct_limit": 100,
    }
    if draw(st.booleans()):
        wire["stop_grace"] = draw(st.floats(min_value=1e-6, max_value=MAX_STOP_GRACE_S))
    if draw(st.booleans()):
        wire["warn_signal"] = f"{draw(signals)}@{duration_text(draw(durations))}"
    return wire


@settings(max_examples=300)
@given(wires())
def test_a_spec_crosses_the_wire_and_back_unchanged(wire: dict[str, object]) -> None:
    spec = spec_from_wire(wire, HOST)
    again = spec_from_wire(spec_to_wire(spec), HOST)
    assert again == spec
    assert derive_caps(again, HOST) == derive_caps(spec, HOST)


@settings(max_examples=50, deadline=None)
@given(wires(), st.booleans())
def test_a_run_goes_into_the_store_and_comes_back_unchanged(tmp_path_factory: pytest.TempPathFactory,
                                                            wire: dict[str, object], finished: bool) -> None:
    store = Store(tmp_path_factory.mktemp("store") / "state.db")
    spec = spec_from_wire(wire, HOST)
    (task,) = store.add_all([spec], [derive_caps(spec, HOST)], time.time())
    assert store.get(task.id) == task
    if finished:
        ended = task.with_(state=State.COMPLETED, started_at=1.5, finished_at=2.25)
        store.save(ended, 3.0)
        assert store.get(task.id) == ended.with_(spec=ended.spec.__class__(**{**ended.spec.__dict__, "env": {}}))
    store.close()


@st.composite
def arrays(draw: st.DrawFn) -> tuple[str, list[int]]:
    """An `--array` text and the indices it names, in order, once each."""
    low = draw(st.integers(0, MAX_INDEX))
    high = draw(st.integers(low, min(MAX_INDEX, low + 5000)))
    step = draw(st.integers(1, 1000))
    extra = draw(st.lists(st.integers(0, MAX_INDEX), max_size=5))
    limit = draw(st.integers(0, 10**8 - 1))
    text = ",".join([f"{low}-{high}:{step}", *map(str, extra)]) + (f"%{limit}" if limit else "")
    return text, list(dict.fromkeys([*range(low, high + 1, step), *extra]))


@given(arrays())
def test_an_array_names_exactly_its_indices(array: tuple[str, list[int]]) -> None:
    text, indices = array
    sweep = parse_array(text)
    assert list(sweep.indices) == indices


@pytest.mark.parametrize("text", ["１-３", "1-٣", "1" * 4000, "1-" + "9" * 5000, "1-3%" + "9" * 5000, "1-3%٣"])
def test_an_array_of_other_digits_or_thousands_of_them_is_refused_with_its_own_words(text: str) -> None:
    with pytest.raises(InvalidArgument, match="array: "):
        parse_array(text)


def test_a_duration_of_more_than_eleven_days_in_a_warning_reaches_the_queue() -> None:
    """The reproduction of issue 32: 12 days before a 30-day kill_timeout."""
    wire = {"name": "ck", "command": "sleep 1", "kill_timeout": "30d", "estimated_time": "20d",
            "warn_signal": "SIGUSR1@12d", "estimated_cpu_cores": 1}
    spec = spec_from_wire(wire, Host(8 * GiB, 2))
    assert spec_from_wire(spec_to_wire(spec), Host(8 * GiB, 2)) == spec


def test_a_stop_grace_must_end() -> None:
    with pytest.raises(InvalidArgument, match="stop_grace must be at most 1h"):
        spec_from_wire({"name": "t", "command": "true", "stop_grace": "2h"}, Host(8 * GiB, 2))


def test_the_largest_environment_is_cleaned_in_linear_time() -> None:
    """20,000 variables (most of them names no task can take) once kept babysitd busy for seconds."""
    many = {f"V{i}": "" for i in range(MAX_ENV_BYTES // 12)} | {f"no-{i}": "" for i in range(MAX_ENV_BYTES // 24)}
    started = time.perf_counter()
    try:
        cleaned = clean_env(many)
    except InvalidArgument:
        cleaned = {}
    took = time.perf_counter() - started
    assert took < 0.05, f"{len(many)} variables took {took * 1000:.0f} ms"
    assert not any(k.startswith("no-") for k in cleaned)
    over = {f"V{i}": "" for i in range(20_000)}
    started = time.perf_counter()
    with pytest.raises(InvalidArgument, match="more than babysit takes"):
        clean_env(over)
    assert time.perf_counter() - started < 0.05
