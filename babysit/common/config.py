"""Daemon settings from `$XDG_CONFIG_HOME/babysit/config.toml`; every key is optional."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from babysit.core.protocol import InvalidArgument
from babysit.core.quantities import parse_size


@dataclass(frozen=True)
class Config:
    tick_s: float = 1.0  # sampling period
    stop_grace_s: float = 10.0  # SIGTERM, then SIGKILL after this long
    cpu_window_s: float = 3.0  # CPU cores are averaged over this window
    mem_budget_pct: float = 100.0  # share of the host's RAM babysit may hand out
    cpu_budget_pct: float = 100.0  # share of the host's cores babysit may hand out
    mem_budget_bytes: int | None = None  # an absolute ceiling as well (a size: "8G")
    cpu_budget_cores: float | None = None
    recheck_s: float = 5.0  # the queue is re-checked this often too, for memory freed outside babysit
    max_live_tasks: float = 2000  # queued and running tasks together; `run` refuses more (QueueFull)
    reconcile_s: float = 30.0  # running tasks are checked against their units this often (a missed end signal)
    tolerance_s: float = 30.0  # 2x an estimate for this long stops a task
    pressure_free_pct: float = 5.0  # free memory below this share of RAM is host pressure...
    pressure_free_bytes: int | None = None  # ...or below this many bytes, when set
    pressure_grace_s: float = 1.0  # tasks within their estimates are stopped only if pressure lasts this long
    history_max_runs: float = 10000  # finished runs kept, with their timelines and events...
    history_max_days: float = 365  # ...and none older than this
    notify: bool = False  # a desktop notification when a task ends (org.freedesktop.Notifications)
    executor: str = "systemd"  # where tasks run: "systemd" (units on this host) or "slurm" (jobs on a cluster)
    slurm_partition: str = ""  # sbatch --partition; "" for the cluster's default
    slurm_account: str = ""  # sbatch --account; "" for the user's default
    slurm_output_dir: str = ""  # where jobs write their output; "" for babysit's state directory
    state_dir: str = ""  # where each host's state goes ("" for $XDG_STATE_HOME/babysit); see daemon.state_dir


EXECUTORS = ("systemd", "slurm")


def most(key: str) -> float:
    """The largest sane value of a numeric key (NaN and infinity are never one: `tick_s = inf` would stop
    the sampling, `stop_grace_s = nan` every start)."""
    if key.endswith("_pct"):
        return 100
    if key.endswith("_s"):
        return 86400  # a day
    if key.endswith("_bytes"):
        return 1 << 60
    if key == "history_max_days":
        return 36500
    return 10_000_000  # counts: max_live_tasks, history_max_runs


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
    values: dict[str, Any] = {}  # each checked against its field below
    flags = {f.name for f in fields(Config) if f.type == "bool"}
    words = {f.name for f in fields(Config) if f.type == "str"}
    for key, value in data.items():
        if key in words:
            if not isinstance(value, str):
                raise InvalidArgument(f"config.toml: {key} must be a string")
            if key == "executor" and value not in EXECUTORS:
                raise InvalidArgument(f"config.toml: executor must be one of {', '.join(EXECUTORS)}")
            values[key] = value
            continue
        if key in flags:
            if not isinstance(value, bool):
                raise InvalidArgument(f"config.toml: {key} must be true or false")
            values[key] = value
            continue
        if key in ("mem_budget_bytes", "pressure_free_bytes") and isinstance(value, str):
            values[key] = parse_size(value)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= most(key):
            raise InvalidArgument(f"config.toml: {key} must be a number more than 0 and at most {most(key):g}")
        values[key] = int(value) if key in ("mem_budget_bytes", "pressure_free_bytes") else float(value)
    return Config(**values)


def load(path: Path | None = None) -> Config:
    path = path or default_path()
    return parse(path.read_text()) if path.exists() else Config()
