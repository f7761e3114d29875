"""Fixtures on the real session bus: a connected Systemd helper and a recorder of unit signals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from dbus_fast import BusType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from babysit.cli.client import DaemonNotRunning
from babysit.core import protocol
from babysit.executors.systemd.manager import Systemd, UnitChange, unit_path
from tests.waiting import wait_for


class UnitSignals:
    """Every PropertiesChanged seen, merged per unit path; tests await conditions on them."""

    def __init__(self) -> None:
        self.state: dict[str, dict[str, Any]] = defaultdict(dict)
        self.seen: dict[str, list[UnitChange]] = defaultdict(list)
        self._waiters: list[tuple[str, Callable[[dict[str, Any]], bool], asyncio.Future[dict[str, Any]]]] = []

    def on_change(self, change: UnitChange) -> None:
        self.seen[change.path].append(change)
        self.state[change.path].update(change.changed)
        if change.changed.get("ActiveState") in ("activating", "active", "deactivating"):
            self.state[change.path]["started"] = True  # a fresh transient unit is loaded as inactive
        for waiter in list(self._waiters):
            path, predicate, future = waiter
            if path == change.path and not future.done() and predicate(self.state[path]):
                future.set_result(dict(self.state[path]))
                self._waiters.remove(waiter)

    async def until(self, unit: str, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The merged signalled properties of `unit` once `predicate` holds for them."""
        path = unit_path(unit)
        if predicate(self.state[path]):
            return dict(self.state[path])
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((path, predicate, future))
        return await asyncio.wait_for(future, timeout)


def ended(props: dict[str, Any]) -> bool:
    return bool(props.get("started")) and props.get("ActiveState") in ("inactive", "failed")


@pytest_asyncio.fixture
async def systemd() -> AsyncIterator[Systemd]:
    bus = await MessageBus(bus_type=BusType.SESSION).connect()
    yield Systemd(bus)
    bus.disconnect()


@pytest_asyncio.fixture
async def signals(systemd: Systemd) -> UnitSignals:
    recorder = UnitSignals()
    await systemd.subscribe(recorder.on_change)
    return recorder


@pytest_asyncio.fixture
async def unit_name(systemd: Systemd) -> AsyncIterator[str]:
    """A fresh transient unit name, reset afterwards so a failed unit does not linger."""
    name = f"smoke-{uuid.uuid4().hex[:10]}.service"
    yield name
    try:
        await systemd.stop_unit(name)
        await systemd.reset_failed_unit(name)
    except DBusError:
        pass  # already gone


@pytest.fixture
def python3() -> str:
    return "/usr/bin/python3"


# --- driving the product as users do ------------------------------------------------------------

BIN = Path(sys.executable).parent


def babysit(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """The `babysit` CLI as a subprocess."""
    return subprocess.run([str(BIN / "babysit"), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)


def status(name: str) -> dict:
    """`babysit status --json` of a task, parsed."""
    shown = babysit("status", f"--name={name}", "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def systemctl_show(unit: str, *props: str) -> dict[str, str]:
    out = subprocess.run(["systemctl", "--user", "show", unit, *(f"--property={p}" for p in props)],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def session_control(request: str) -> None:
    """What an administrator would do as root (restart-journald, pause-journald, resume-journald), asked of
    the private session's root through its control socket."""
    path = os.environ.get("BABYSIT_SESSION_CONTROL")
    if not path:
        pytest.skip(f"{request} needs root: run the tests through tests/session/run.py as root")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:
        control.settimeout(60)
        control.connect(path)
        control.sendall(f"{request}\n".encode())
        assert control.makefile().readline().strip() == "ok"


def task_output(name: str) -> list[str]:
    """The lines a task printed, and nothing systemd logged about its unit."""
    return journal(name).splitlines()


def babysit_units(prefix: str = "") -> set[str]:
    """Loaded task units whose task name starts with `prefix`."""
    out = subprocess.run(["systemctl", "--user", "list-units", "--all", "--plain", "--no-legend",
                          f"{protocol.UNIT_PREFIX}{prefix}*"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def daemon_pid() -> int:
    return int(systemctl_show(protocol.DAEMON_UNIT, "MainPID")["MainPID"])


def rss_bytes(pid: int) -> int:
    """A process's resident memory, as the kernel counts it (VmRSS)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) * 1024


# estimates small enough for many tasks side by side on 2 cores
TINY = {"estimated_cpu_cores": "0.01", "estimated_mem_bytes": "16M", "estimated_time": "30s"}


def run_spec(name: str, command: str, **fields: str) -> dict[str, Variant]:
    """A D-Bus `Run` spec as the CLI sends it: tiny estimates unless `fields` say otherwise."""
    values = {"name": name, "command": command, "cwd": os.getcwd(), **TINY, **fields}
    return {k: Variant("s", v) for k, v in values.items()}


async def until(predicate: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """The first truthy value of an async predicate; a daemon that is down counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = await predicate()
        except DaemonNotRunning:
            value = None
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def journal(name: str, output: str = "cat") -> str:
    """A task's output as `babysit log` finds it (journalctl exits 1 until its first entry exists)."""
    argv = ["journalctl", "--user", *protocol.output_matches(name), "-o", output, "--no-pager"]
    return subprocess.run(argv, capture_output=True, text=True).stdout


@pytest.fixture(scope="session")
def daemon() -> str:
    """babysitd installed and started the way a user does it."""
    started = babysit("daemon-start", timeout=120)
    assert started.returncode == 0, started.stderr
    return started.stdout


@pytest.fixture
def task_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def daemon_log_since(at: float) -> str:
    """babysitd's journal from a second before `at` on (journalctl's resolution here is a second)."""
    return subprocess.run(["journalctl", "--user", "-u", "babysitd", f"--since=@{int(at) - 1}", "-o", "cat",
                           "--no-pager"], capture_output=True, text=True).stdout


# a Slurm job runs where slurmd runs, outside the session's private mounts (the test user's home is one):
# its output goes where both see it, as a cluster's shared filesystem would
SLURM_OUTPUT = Path("/tmp/babysit-slurm-output")


@contextlib.contextmanager
def manager_environment(name: str, value: str) -> Iterator[None]:
    """A variable in the user manager's environment, as environment.d sets one, for the services it starts."""
    subprocess.run(["systemctl", "--user", "set-environment", f"{name}={value}"], check=True)
    try:
        yield
    finally:
        subprocess.run(["systemctl", "--user", "unset-environment", name], check=True)


@contextlib.contextmanager
def on_slurm(config: str = "") -> Iterator[None]:
    """babysitd restarted with the Slurm executor, on the cluster the Slurm tier started (SLURM_CONF)."""
    SLURM_OUTPUT.mkdir(mode=0o755, exist_ok=True)
    since = time.time()
    # the Slurm tier sets SLURM_CONF (see tests/conftest.py); with it, babysitd's sbatch finds the cluster
    with (manager_environment("SLURM_CONF", os.environ["SLURM_CONF"]),
          daemon_config(f'{config}executor = "slurm"\nslurm_output_dir = "{SLURM_OUTPUT}"\n')):
        yield
    # an error while following jobs is a bug, even where every test passed
    errors = [line for line in daemon_log_since(since).splitlines() if line.startswith(("ERROR", "CRITICAL"))]
    assert not errors, "\n".join(errors)


@dataclass(frozen=True)
class Gate:
    """A file a task waits for, so the test, not a sleep's length, decides when the task ends."""

    path: Path

    def then(self, command: str) -> str:
        """A shell command that waits for the gate to open, then runs `command`."""
        return f"until [ -e {self.path} ]; do sleep 0.1; done; {command}"

    def open(self) -> None:
        self.path.touch()


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    return Gate(tmp_path / "gate")


@pytest.fixture
def figure(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Print a measured figure in the test output (benchmarks print, they do not assert)."""

    def write(line: str) -> None:
        with capsys.disabled():
            print(f"\nFIGURE {line}", flush=True)

    return write


def restart_daemon() -> None:
    subprocess.run(["systemctl", "--user", "restart", "babysitd.service"], check=True, timeout=60)
    wait_for(lambda: babysit("ping").returncode == 0, 30, "babysitd")


@contextlib.contextmanager
def daemon_config(text: str) -> Iterator[None]:
    """babysitd restarted with this config.toml, and restarted without it afterwards."""
    config = Path.home() / ".config" / "babysit" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    before = config.read_text() if config.exists() else None
    config.write_text(text)
    restart_daemon()
    try:
        yield
    finally:
        if before is None:
            config.unlink()
        else:
            config.write_text(before)
        restart_daemon()


# --- a real terminal ----------------------------------------------------------------------------


class Terminal:
    """One tmux server of this test's own (its own socket), with one 80x24 window."""

    def __init__(self) -> None:
        self.socket = f"babysit-top-{uuid.uuid4().hex[:8]}"

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)

    def start(self, command: str) -> None:
        started = self.tmux("new-session", "-d", "-s", "top", "-x", "80", "-y", "24", command)
        assert started.returncode == 0, started.stderr

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top").stdout

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", "top").returncode == 0

    def close(self) -> None:
        self.tmux("kill-server")


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    try:
        yield term
    finally:
        term.close()
