"""Daemon settings from `$XDG_CONFIG_HOME/babysit/config.toml`; every key is optional."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from babysit.protocol import InvalidArgument


@dataclass(frozen=True)
class Config:
    tick_s: float = 1.0  # sampling period
    stop_grace_s: float = 10.0  # SIGTERM, then SIGKILL after this long
    cpu_window_s: float = 3.0  # CPU cores are averaged over this window
    mem_budget_pct: float = 100.0  # share of the host's RAM babysit may hand out
    cpu_budget_pct: float = 100.0  # share of the host's cores babysit may hand out


def default_path() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(config_home, "babysit", "config.toml")


def parse(text: str) -> Config:
    """A Config from TOML text; unknown keys and bad values are InvalidArgument."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"config.toml: {e}") from None
    known = {f.name for f in fields(Config)}
    unknown = set(data) - known
    if unknown:
        raise InvalidArgument(f"config.toml: unknown keys {', '.join(sorted(unknown))}")
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise InvalidArgument(f"config.toml: {key} must be a positive number")
    return Config(**{k: float(v) for k, v in data.items()})


def load(path: Path | None = None) -> Config:
    path = path or default_path()
    return parse(path.read_text()) if path.exists() else Config()
