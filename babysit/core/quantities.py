"""Durations and sizes as users write them (`1h30m`, `1.5G`) and as babysit prints them."""

from __future__ import annotations

import re
from decimal import Decimal

from babysit.core.protocol import InvalidArgument

_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)
MAX_DURATION_S = 365 * 86400
MAX_SIZE = 1 << 60


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `10m`, `2h`, `1h30m`, `1d`; anything else is InvalidArgument."""
    text = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    else:
        match = _DURATION.fullmatch(text)
        if not text or not match or not any(match.groups()):
            raise InvalidArgument(f"invalid duration {shortened(text)!r}: use e.g. 90, 90s, 10m, 2h, 1h30m, 1d")
        seconds = sum(float(v) * u for v, u in zip(match.groups(), _DURATION_UNITS.values()) if v)
    if not 0 < seconds <= MAX_DURATION_S:
        raise InvalidArgument(f"duration {shortened(text)!r} must be more than 0 and at most 365d")
    return seconds


def parse_size(text: str) -> int:
    """Bytes from `4096`, `512M`, `4G`, `1.5G`, `4GiB` (powers of 1024); else InvalidArgument."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise InvalidArgument(f"invalid size {shortened(text)!r}: use e.g. 4096, 512M, 4G, 1.5G, 4GiB")
    size = float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]  # 400 digits make inf
    if not 0 < size <= MAX_SIZE:
        raise InvalidArgument(f"size {shortened(text)!r} must be more than 0 bytes and at most 1 EiB")
    return int(size)


def shortened(text: str, most: int = 40) -> str:
    """Text a refusal quotes, cut to a readable length."""
    return text if len(text) <= most else f"{text[:most]}..."


def format_size(size: float | None, compact: bool = False) -> str:
    """`9.1 GiB`, `512 MiB`, `300 B`; compact, for a narrow column: `9.1G`, `3.0G`, `816K`; `-` for a
    figure not measured."""
    if size is None:
        return "-"
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor:
            value = size / factor
            figure = f"{value:.1f}" if value < 10 and (compact or value != int(value)) else f"{value:.0f}"
            return f"{figure}{unit}" if compact else f"{figure} {unit}iB"
    return f"{size:.0f}B" if compact else f"{size:.0f} B"


def size_flag(size: float) -> str:
    """A size as a flag value, rounded up to a readable unit: `10G`, `768M`."""
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor:
            return f"{-(-size // factor):.0f}{unit}"
    return f"{size:.0f}"


def duration_text(seconds: float) -> str:
    """A duration as text that parse_duration reads back as exactly the same float (`1036800.0s`), for the
    values babysit itself writes into a spec: no exponent, no rounding."""
    return f"{Decimal(repr(float(seconds))):f}s"


def format_duration(seconds: float) -> str:
    """`1h30m`, `2m05s`, `7s`, `0.4s`: also valid input to parse_duration (bar the zero padding)."""
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"
