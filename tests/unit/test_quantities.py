import pytest

from babysit.core.protocol import InvalidArgument
from babysit.core.quantities import format_duration, format_size, parse_duration, parse_size, size_flag
from babysit.core.task import Host, spec_from_wire


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400),
                                           ("1d", 86400), ("1.5h", 5400), (" 5m ", 300)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0", "0s", "1h30", "m", "5 m", "1y", "400d", "1e3"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_duration(text)


@pytest.mark.parametrize("text, size", [("4096", 4096), ("512M", 512 << 20), ("4G", 4 << 30), ("1.5G", 3 << 29),
                                        ("4GiB", 4 << 30), ("4gb", 4 << 30), ("2K", 2048)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "4X", "-1G", "0", "G", "1.5.5G", "4 G B", "2E"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_size(text)


def test_formatting() -> None:
    assert format_size(int(9.1 * (1 << 30))) == "9.1 GiB"
    assert format_size(512 << 20) == "512 MiB"
    assert format_size(300) == "300 B"
    assert size_flag(int(9.1 * (1 << 30))) == "10G"
    assert size_flag(700 << 20) == "700M"
    assert [format_duration(s) for s in (0.4, 7, 125, 5400, 7200, 90000)] == ["0.4s", "7s", "2m05s", "1h30m", "2h",
                                                                              "1d1h"]


@pytest.mark.parametrize("text", ["9" * 400, "9" * 400 + "G", "1" + "0" * 30 + "T"])
def test_a_size_of_any_length_is_refused_in_one_line(text: str) -> None:
    """Seen in review: a 400-digit size reached the daemon and came back as an internal error."""
    with pytest.raises(InvalidArgument, match=r"must be more than 0 bytes and at most 1 EiB") as refused:
        parse_size(text)
    assert len(str(refused.value)) < 120


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e300])
def test_sizes_and_numbers_over_d_bus_must_be_finite(value: float) -> None:
    """Seen in review: NaN and infinite sizes over D-Bus crashed the daemon's parsing."""
    for key in ("estimated_mem_bytes", "estimated_cpu_cores", "estimated_time", "mem_pct_limit"):
        with pytest.raises(InvalidArgument, match=key):
            spec_from_wire({"name": "t", "command": "true", key: value}, Host(8 << 30, 2.0))
