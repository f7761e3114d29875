"""Benchmarks: each babysit figure next to its floor (systemd itself, or plain Python) in the same run.

Inside a user session (these machines: through the private session runner):

    python3 tests/session/run.py -- .venv/bin/python -m tests.bench [--quick]

Prints one table; nothing is asserted. `--quick` shortens the daemon-cost and throughput runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from dbus_fast import Message, Variant
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method

from babysit.cli.client import Client
from babysit.cli.waiting import Waiter
from babysit.common.config import Config
from babysit.common import bus as session_bus
from babysit.core.protocol import BUS_NAME, SCHEDULER_INTERFACE, SCHEDULER_PATH, State, unit_name
from babysit.executors.systemd.manager import Systemd
from tests.integration.conftest import (
    BIN, TINY, UnitSignals, daemon_pid, ended, restart_daemon, rss_bytes, run_spec,
)

BABYSIT = str(BIN / "babysit")
BENCH = {**TINY, "estimated_mem_bytes": "8M", "estimated_time": "10m"}  # outlives the daemon-cost window
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Row:
    figure: str
    babysit: float
    floor: float | None
    floor_name: str
    unit: str = "ms"

    def cells(self) -> list[str]:
        ratio = f"{self.babysit / self.floor:.1f}x" if self.floor else ""
        floor = "" if self.floor is None else self.shown(self.floor)
        return [self.figure, self.shown(self.babysit), floor, ratio, self.floor_name]

    def shown(self, value: float) -> str:
        digits = 0 if self.unit == "ms" and value >= 10 else 2 if self.unit != "MiB" else 1
        return f"{value:.{digits}f} {self.unit}"


def ms(seconds: float) -> float:
    return seconds * 1000


def median_ms(samples: list[float]) -> float:
    return ms(statistics.median(samples))


async def spawn(*argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)


def spec(name: str, command: str) -> dict[str, Variant]:
    return run_spec(name, command, **BENCH)


def active(props: dict) -> bool:
    return props.get("ActiveState") == "active"


def over(props: dict) -> bool:
    """The main process has exited: the unit left `running` (babysit's units record their end first)."""
    return ended(props) or props.get("SubState") in ("stop-post", "exited")


# --- 1. submit -> unit active ------------------------------------------------------------------


async def submit_to_active(signals: UnitSignals, client: Client, systemd: Systemd, n: int) -> list[Row]:
    cli, dbus, run_floor, api_floor = [], [], [], []
    for _ in range(n):
        name = f"b-{uuid.uuid4().hex[:8]}"
        start = time.monotonic()
        await (await spawn(BABYSIT, "run", f"--name={name}", "--command=sleep 1", *flags())).wait()
        await signals.until(unit_name(name), active, 30)
        cli.append(time.monotonic() - start)

        name = f"b-{uuid.uuid4().hex[:8]}"
        start = time.monotonic()
        await client.call("Run", "a{sv}b", [spec(name, "sleep 1"), False])
        await signals.until(unit_name(name), active, 30)
        dbus.append(time.monotonic() - start)

        unit = f"floor-{uuid.uuid4().hex[:8]}.service"
        start = time.monotonic()
        await (await spawn("systemd-run", "--user", "--quiet", f"--unit={unit}", "sleep", "1")).wait()
        await signals.until(unit, active, 30)
        run_floor.append(time.monotonic() - start)

        unit = f"floor-{uuid.uuid4().hex[:8]}.service"
        start = time.monotonic()
        await systemd.start_transient_unit(unit, {"ExecStart": [("/bin/sleep", ["/bin/sleep", "1"], False)]})
        await signals.until(unit, active, 30)
        api_floor.append(time.monotonic() - start)
    return [
        Row("submit -> unit active, CLI (`babysit run`)", median_ms(cli), median_ms(run_floor), "`systemd-run --user`"),
        Row("submit -> unit active, D-Bus `Run` (daemon side)", median_ms(dbus), median_ms(api_floor),
            "`StartTransientUnit` call"),
    ]


def flags() -> list[str]:
    return [f"--{k}={v}" for k, v in BENCH.items()]


# --- 2. unit exit -> waiter returns ---------------------------------------------------------------


async def exit_to_return(signals: UnitSignals, n: int) -> list[Row]:
    babysit_delays, printed_delays, floor_delays = [], [], []
    for _ in range(n):
        name = f"b-{uuid.uuid4().hex[:8]}"
        await (await spawn(BABYSIT, "run", f"--name={name}", "--command=sleep 1.5", *flags())).wait()
        waiter = await asyncio.create_subprocess_exec(BABYSIT, "wait", f"--name={name}", stdout=asyncio.subprocess.PIPE,
                                                      stderr=asyncio.subprocess.DEVNULL)
        await signals.until(unit_name(name), over, 30)
        exited = time.monotonic()
        assert waiter.stdout is not None
        await waiter.stdout.read(1)  # the result is printed (the process still has to wind down)
        printed_delays.append(time.monotonic() - exited)
        await waiter.wait()
        babysit_delays.append(time.monotonic() - exited)

        unit = f"floor-{uuid.uuid4().hex[:8]}.service"
        waiter = await spawn("systemd-run", "--user", "--quiet", "--wait", f"--unit={unit}", "sleep", "1.5")
        await signals.until(unit, over, 30)
        exited = time.monotonic()
        await waiter.wait()
        floor_delays.append(time.monotonic() - exited)
    floor = median_ms(floor_delays)
    return [Row("unit exit -> result printed (`babysit wait`)", median_ms(printed_delays), floor,
                "`systemd-run --user --wait` returns"),
            Row("unit exit -> waiter returns (`babysit wait`)", median_ms(babysit_delays), floor,
                "`systemd-run --user --wait` returns")]


# --- 3. CLI cold start ------------------------------------------------------------------------------


def wall(argv: list[str] | Callable[[], list[str]], n: int, env: dict[str, str] | None = None) -> float:
    """The median wall time of a command; a callable makes its command line afresh each time."""
    samples = []
    for _ in range(n):
        command = argv() if callable(argv) else argv
        start = time.monotonic()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        samples.append(time.monotonic() - start)
    return median_ms(samples)


def installed_cli(work: Path) -> Path:
    """A `babysit` installed from the wheelhouse as users install it (an editable install imports more)."""
    wheelhouse = ROOT / ".wheelhouse"
    if not any(wheelhouse.glob("babysit-*.whl")):
        print("bench: no wheel in .wheelhouse; timing the checkout's editable install", file=sys.stderr)
        return BIN
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(work / "venv")], check=True)
    subprocess.run([str(work / "venv" / "bin" / "pip"), "install", "-q", "--no-index", f"--find-links={wheelhouse}",
                    "babysit"], check=True)
    return work / "venv" / "bin"


def cold_start(n: int, work: Path) -> tuple[list[Row], str]:
    """Each hot verb's wall time against importing what any D-Bus client needs, in the same Python."""
    bin_dir = installed_cli(work)
    babysit = str(bin_dir / "babysit")
    floor = wall([str(bin_dir / "python3"), "-c", "import asyncio, dbus_fast.aio"], n)
    done = f"bench-cold-{uuid.uuid4().hex[:6]}"
    subprocess.run([babysit, "run", f"--name={done}", "--command=true", "--estimated_mem_bytes=8M",
                    "--estimated_cpu_cores=0.01"], check=True, capture_output=True)
    subprocess.run([babysit, "wait", f"--name={done}"], check=True, capture_output=True)
    fresh = iter(f"bench-cold-{uuid.uuid4().hex[:6]}" for _ in range(n))
    verbs = {
        "ping": lambda: [babysit, "ping"],
        "status": lambda: [babysit, "status", f"--name={done}", "--json"],
        "wait": lambda: [babysit, "wait", f"--name={done}"],
        "run": lambda: [babysit, "run", f"--name={next(fresh)}", "--command=true", "--estimated_mem_bytes=8M",
                        "--estimated_cpu_cores=0.01"],
    }
    rows = [Row(f"CLI cold start: `babysit {verb}`", wall(argv, n), floor,
                "`python3 -c \"import asyncio, dbus_fast.aio\"`") for verb, argv in verbs.items()]
    return rows, heaviest_imports([str(bin_dir / "python3"), "-X", "importtime", babysit, "ping"])


def heaviest_imports(argv: list[str], top: int = 8) -> str:
    """The packages `babysit ping` imports, by the time spent in their own modules."""
    err = subprocess.run(argv, capture_output=True, text=True).stderr
    totals: dict[str, int] = {}
    for line in err.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if match:
            package = match.group(2).split(".")[0]
            totals[package] = totals.get(package, 0) + int(match.group(1))
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{name} {us / 1000:.0f} ms" for name, us in ranked)


# --- 4. daemon cost ---------------------------------------------------------------------------------


def daemon_usage() -> tuple[float, float]:
    """babysitd's CPU seconds so far and its RSS in MiB."""
    pid = daemon_pid()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / 100, rss_bytes(pid) / (1 << 20)


async def daemon_cost(client: Client, seconds: float, tasks: int) -> list[Row]:
    async def measure() -> tuple[float, float]:
        cpu_before, _ = daemon_usage()
        await asyncio.sleep(seconds)  # the measurement window itself
        cpu_after, rss = daemon_usage()
        return cpu_after - cpu_before, rss

    idle_cpu, idle_rss = await measure()
    names = [f"cost-{uuid.uuid4().hex[:6]}-{i}" for i in range(tasks)]
    for name in names:
        await client.call("Run", "a{sv}b", [spec(name, "sleep 100000"), True])
    await until_all(client, names, lambda s: s == State.RUNNING, 120)
    busy_cpu, busy_rss = await measure()
    for name in names:
        await client.call("Kill", "s", [name])
    await until_all(client, names, lambda s: s.terminal, 120)
    return [
        Row(f"babysitd CPU, {tasks} tasks for {seconds:.0f} s", busy_cpu, idle_cpu, "idle, no task", "s"),
        Row(f"babysitd RSS, {tasks} tasks", busy_rss, idle_rss, "idle, no task", "MiB"),
    ]


def largest_store(work: Path) -> list[Row]:
    """babysitd started on the largest store babysit allows (max_live_tasks queued tasks, each with the
    longest command and the largest environment), against the same daemon started on an empty one."""
    from babysit.daemon.state_dir import STORE_FILE, host_name
    from tests.integration.test_bounds import fill_store

    def started_on(state: Path) -> tuple[float, float]:
        subprocess.run(["systemctl", "--user", "set-environment", f"XDG_STATE_HOME={state}"], check=True)
        try:
            begun = time.monotonic()
            restart_daemon()
            return time.monotonic() - begun, daemon_usage()[1]
        finally:
            subprocess.run(["systemctl", "--user", "unset-environment", "XDG_STATE_HOME"], check=True)

    most = int(Config().max_live_tasks)
    fill_store(work / "largest" / "babysit" / host_name() / STORE_FILE, most)
    empty_s, empty_rss = started_on(work / "empty")
    full_s, full_rss = started_on(work / "largest")
    restart_daemon()  # on the usual store again
    return [
        Row(f"babysitd RSS at start, the largest store ({most} queued, 32 KiB commands, 96 KiB env)", full_rss,
            empty_rss, "an empty store", "MiB"),
        Row("babysitd restart -> answering, the largest store", full_s * 1000, empty_s * 1000, "an empty store"),
    ]


async def flood_cost(client: Client, seconds: float) -> list[Row]:
    """babysitd's CPU while one task prints as fast as it can: stall detection must not read the lines."""
    cpu_before, _ = daemon_usage()
    await asyncio.sleep(seconds)
    idle_cpu = daemon_usage()[0] - cpu_before
    name = f"flood-{uuid.uuid4().hex[:6]}"
    flood = f"timeout {seconds:g} /usr/bin/python3 -u -c 'import itertools\nfor i in itertools.count(): print(i)'"
    cpu_before, _ = daemon_usage()
    await client.call("Run", "a{sv}b", [spec(name, f"{flood}; true"), True])
    await until_all(client, [name], lambda s: s.terminal, seconds + 60)
    busy_cpu = daemon_usage()[0] - cpu_before
    return [Row(f"babysitd CPU, a task printing flat out for {seconds:g} s", busy_cpu, idle_cpu, "idle, no task", "s")]


async def until_all(client: Client, names: list[str], done: Callable[[State], bool], timeout: float) -> None:
    """Until each task's state is `done`. Live tasks only are listed (the whole history, asked every
    0.2 s, would cost the daemon more than the work being measured); a name not live is asked once."""
    pending, deadline = set(names), time.monotonic() + timeout
    while time.monotonic() < deadline:
        (live,) = await client.call("List", "b", [False])
        states = {r["name"]: State(r["status"]) for r in live if r["name"] in pending}
        for name in pending - states.keys():
            (status,) = await client.call("Status", "s", [name])
            states[name] = State(status["status"])
        pending = {name for name, state in states.items() if not done(state)}
        if not pending:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"tasks not done within {timeout}s")


# --- 5. throughput ----------------------------------------------------------------------------------


async def throughput(client: Client, systemd: Systemd, signals: UnitSignals, n: int) -> list[Row]:
    names = [f"tp-{uuid.uuid4().hex[:6]}-{i}" for i in range(n)]
    start = time.monotonic()
    for name in names:
        await client.call("Run", "a{sv}b", [spec(name, "true"), True])
    await until_all(client, names, lambda s: s == State.COMPLETED, 600)
    babysit_s = time.monotonic() - start
    start = time.monotonic()
    for _ in range(n):
        await (await spawn("systemd-run", "--user", "--quiet", "--wait", "true")).wait()
    sequential_s = time.monotonic() - start
    # what the user manager itself manages: every unit started at once, each waited for
    units = [f"floor-{uuid.uuid4().hex[:6]}-{i}.service" for i in range(n)]
    start = time.monotonic()
    await asyncio.gather(*(systemd.start_transient_unit(unit, {"ExecStart": [("/bin/true", ["/bin/true"], False)]})
                           for unit in units))
    for unit in units:
        await signals.until(unit, ended, 120)
    parallel_s = time.monotonic() - start
    figure = f"{n} short tasks, submit -> all terminal"
    return [Row(figure, babysit_s, sequential_s, "loop of `systemd-run --user --wait`", "s"),
            Row(figure, babysit_s, parallel_s, "systemd alone: all started at once over D-Bus", "s")]


# --- 6. scale: a long queue, a long history --------------------------------------------------------


async def scale(client: Client, queued: int, history: int, n: int) -> list[Row]:
    """List of a long queue, and Run and Status calls once the history is long, against a Ping round trip.

    A holder takes every core, so the other tasks queue (Run then starts no unit: the call's own cost);
    killing them from the queue makes each a finished run in the history.
    """
    async def call_ms(method: str, signature: str, body: list) -> float:
        start = time.perf_counter()
        await client.call(method, signature, body)
        return ms(time.perf_counter() - start)

    learner = f"learn-{uuid.uuid4().hex[:6]}"  # ten completed runs, for Run to learn its estimates from
    for _ in range(10):
        await client.call("Run", "a{sv}b", [spec(learner, "true"), True])
        await Waiter(client).wait([learner])
    holder = f"holder-{uuid.uuid4().hex[:6]}"
    cores = str(os.cpu_count())
    await client.call("Run", "a{sv}b", [run_spec(holder, "sleep 100000", **{**BENCH, "estimated_cpu_cores": cores,
                                                                          "cpu_pct_limit": "100"}), True])
    ping = statistics.median([await call_ms("Ping", "", []) for _ in range(n)])
    list_ms, run_ms, status_ms = 0.0, [], []
    for round_ in range(max(1, history // queued)):
        names = [f"scale-{uuid.uuid4().hex[:6]}-{i}" for i in range(queued)]
        for name in names:
            await client.call("Run", "a{sv}b", [spec(name, "true"), True])
        if round_ == 0:
            list_ms = statistics.median([await call_ms("List", "b", [False]) for _ in range(n)])
            bare_ms = await bare_reply_ms(client, n)
        for name in names:
            await client.call("Kill", "s", [name])
    learning_ms, history_ms = [], []
    unestimated = {"name": Variant("s", learner), "command": Variant("s", "true"), "cwd": Variant("s", os.getcwd())}
    for _ in range(n):
        name = f"scale-{uuid.uuid4().hex[:6]}"
        # each measured call after a light one: a Kill's aftermath (drain, signals) would count in the next
        await client.call("Ping")
        run_ms.append(await call_ms("Run", "a{sv}b", [spec(name, "true"), True]))
        status_ms.append(await call_ms("Status", "s", [name]))
        learning_ms.append(await call_ms("Run", "a{sv}b", [unestimated, True]))
        history_ms.append(await call_ms("History", "su", [learner, 20]))
        await client.call("Kill", "s", [name])
        await client.call("Kill", "s", [learner])
    await client.call("Kill", "s", [holder])
    floor = "`Ping` round trip"
    return [Row(f"`List` of {queued} queued tasks", list_ms, ping, floor),
            Row(f"`List` of {queued} queued tasks", list_ms, bare_ms, "the same reply from a bare D-Bus service"),
            Row(f"`Run` (queued) with {history} runs in the history", statistics.median(run_ms), ping, floor),
            Row(f"`Status` with {history} runs in the history", statistics.median(status_ms), ping, floor),
            Row(f"`Run` learning its estimates from 10 earlier runs, {history} in the history",
                statistics.median(learning_ms), ping, floor),
            Row(f"`History` of one name (20 runs) with {history} in the history", statistics.median(history_ms),
                ping, floor)]


class Echo(ServiceInterface):
    """A service that only returns a reply it was given: what carrying a List reply costs on this bus."""

    def __init__(self, body: list) -> None:
        super().__init__("org.babysit.BenchEcho")
        self.body = body

    @dbus_method()
    def Reply(self) -> Annotated[list, DBusSignature("aa{sv}")]:
        return self.body[0]


async def bare_reply_ms(client: Client, n: int) -> float:
    """The median time for the client to get the last List reply again from an `Echo` on its own bus connection."""
    reply = await client.bus.call(Message(destination=BUS_NAME, path=SCHEDULER_PATH, member="List",
                                          interface=SCHEDULER_INTERFACE, signature="b", body=[False]))
    service = await session_bus.connect()
    try:
        service.export("/echo", Echo(reply.body))
        times = []
        for _ in range(n):
            start = time.perf_counter()
            await client.call("Reply", destination=service.unique_name, path="/echo",
                              interface="org.babysit.BenchEcho")
            times.append(ms(time.perf_counter() - start))
        return statistics.median(times)
    finally:
        service.disconnect()


# --- 7. peers: task-spooler and nq, doing the same jobs from a shell ----------------------------------


PEERS = {"tsp": "task-spooler", "nq": "nq"}
STAMP = "sleep 1; echo $EPOCHREALTIME > {}"  # the job's last statement: when it ended, to the microsecond


async def peers(client: Client, n_submit: int, n_drain: int, n_wake: int, work: Path) -> list[Row]:
    """Submit latency, jobs drained and wake-up after a job's end, for babysit's CLI and each peer's.

    Jobs are submitted with each tool's CLI, as from a shell. To wait for many babysit jobs, one D-Bus
    client watches them all (a `babysit wait` per job would time 300 interpreter starts instead).
    """
    missing = [package for tool, package in PEERS.items() if not shutil.which(tool)]
    if missing:
        print(f"bench: peers skipped; apt-get install {' '.join(missing)}", file=sys.stderr)
        return []
    env = {**os.environ, "TS_SOCKET": str(work / "tsp.socket"), "TMPDIR": str(work), "NQDIR": str(work / "nq")}
    subprocess.run(["tsp", "-S", str(os.cpu_count())], env=env, check=True)  # as many slots as cores
    tools = ["babysit", *PEERS]
    latency = {tool: statistics.median(timed(lambda: submit(tool, "true", env)) for _ in range(n_submit))
               for tool in tools}
    drained = {}
    for tool in tools:
        start = time.monotonic()
        jobs = [submit(tool, "true", env) for _ in range(n_drain)]
        if tool == "babysit":
            await until_all(client, jobs, lambda s: s.terminal, 600)
        else:
            wait_for_jobs(tool, jobs, env)
        drained[tool] = time.monotonic() - start
    wake: dict[str, list[float]] = {tool: [] for tool in (*tools, "systemd-run")}
    for i in range(n_wake):
        for tool in wake:
            stamp = work / f"stamp-{tool}-{i}"
            if tool == "systemd-run":
                subprocess.run(["systemd-run", "--user", "--quiet", "--wait", "bash", "-c", STAMP.format(stamp)],
                               check=True)
            else:
                wait_for_jobs(tool, [submit(tool, STAMP.format(stamp), env)], env)
            wake[tool].append(time.time() - float(stamp.read_text()))
    subprocess.run(["tsp", "-K"], env=env, capture_output=True)
    rows = []
    for tool in PEERS:
        rows += [Row("submit a job from a shell", ms(latency["babysit"]), ms(latency[tool]), f"`{tool}`"),
                 Row(f"{n_drain} `true` jobs from a shell, submit -> all done", drained["babysit"], drained[tool],
                     f"`{tool}`", "s"),
                 Row("job's last statement -> waiter returns", median_ms(wake["babysit"]), median_ms(wake[tool]),
                     f"`{tool} -w`")]
    rows.append(Row("job's last statement -> waiter returns", median_ms(wake["babysit"]),
                    median_ms(wake["systemd-run"]), "`systemd-run --user --wait`"))
    return rows


def timed(action: Callable[[], object]) -> float:
    start = time.monotonic()
    action()
    return time.monotonic() - start


def submit(tool: str, command: str, env: dict[str, str]) -> str:
    """Queue `command` with `tool` the way a shell user would; the job's id for its waiter."""
    if tool == "babysit":
        name = f"peer-{uuid.uuid4().hex[:8]}"
        subprocess.run([BABYSIT, "run", f"--name={name}", f"--command={command}", "--force", *flags()], check=True,
                       capture_output=True)
        return name
    argv = {"tsp": ["tsp"], "nq": ["nq"]}[tool] + ["bash", "-c", command]
    return subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout.strip()


def wait_for_jobs(tool: str, jobs: list[str], env: dict[str, str]) -> None:
    """Until every job is over, as each tool's own waiter sees it."""
    if tool == "nq":
        subprocess.run(["nq", "-w", *jobs], env=env, capture_output=True)
        return
    for job in jobs:
        argv = [BABYSIT, "wait", f"--name={job}"] if tool == "babysit" else ["tsp", "-w", job]
        subprocess.run(argv, env=env, capture_output=True)


# --- 8. reaction: trigger -> kill -------------------------------------------------------------------


def reactions() -> list[str]:
    """The watchdog tests measure each kill reason's delay; their FIGURE lines, as printed."""
    done = subprocess.run([str(BIN / "pytest"), "-q", "-s", "-p", "no:cacheprovider", str(ROOT / "tests/integration/test_watchdogs.py")],
                          capture_output=True, text=True, cwd=ROOT)
    return [line.removeprefix("FIGURE ") for line in done.stdout.splitlines() if line.startswith("FIGURE ")]


# --- the table ----------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    header = ["figure", "babysit", "floor", "ratio", "floor is"]
    lines = [header, ["---"] * len(header), *(r.cells() for r in rows)]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


async def main(quick: bool, only: str | None) -> None:
    subprocess.run([BABYSIT, "daemon-start"], check=True, capture_output=True)
    bus = await session_bus.connect()  # waits when the socket is full: the floor sends 300 calls at once
    systemd, client, signals = Systemd(bus), Client(bus), UnitSignals()
    await systemd.subscribe(signals.on_change)
    work = tempfile.TemporaryDirectory()
    imports = ""

    async def cold() -> list[Row]:
        nonlocal imports
        rows, imports = cold_start(5 if quick else 15, Path(work.name))
        return rows

    steps: list[tuple[str, Callable[[], Awaitable[list[Row]]]]] = [
        ("cold start", cold),
        ("submit -> active", lambda: submit_to_active(signals, client, systemd, 5 if quick else 10)),
        ("exit -> return", lambda: exit_to_return(signals, 3 if quick else 8)),
        ("throughput", lambda: throughput(client, systemd, signals, 60 if quick else 300)),
        ("daemon cost", lambda: daemon_cost(client, 10 if quick else 60, 100)),
        ("flood cost", lambda: flood_cost(client, 5 if quick else 10)),
        ("scale", lambda: scale(client, 200 if quick else 1000, 1000 if quick else 10_000, 11)),
        ("largest store", lambda: asyncio.to_thread(largest_store, Path(work.name))),
        ("peers", lambda: peers(client, 5 if quick else 15, 60 if quick else 300, 3 if quick else 8,
                                Path(work.name))),
    ]
    rows: list[Row] = []
    for label, step in steps:
        if only is None or only in label:
            print(f"bench: {label} ...", file=sys.stderr, flush=True)
            done = await step()
            for row in done:  # as they come: a step that fails later loses none of them
                print(f"bench:   {' | '.join(row.cells())}", file=sys.stderr, flush=True)
            rows += done
    kills = []
    if only is None:
        print("bench: reactions (tests/integration/test_watchdogs.py) ...", file=sys.stderr, flush=True)
        kills = reactions()
    bus.disconnect()
    work.cleanup()
    print(table(rows))
    if imports:
        print(f"\n`babysit ping` imports, heaviest first: {imports}")
    if kills:
        print("\nTrigger -> kill, per kill reason (tick 0.25 s, tolerance 2 s, as in the watchdog tests):")
        for line in kills:
            print(f"- {line}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter daemon-cost and throughput runs")
    parser.add_argument("--only", help="run only the steps whose label contains this (e.g. 'cold start')")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.quick, arguments.only))
