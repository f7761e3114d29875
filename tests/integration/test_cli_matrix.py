"""Every CLI verb, with and without a terminal, against no task, a queued, a running and a finished one.

The tests are grouped by the state of the world (the module-scoped `world` fixture is parametrized, so
pytest runs all tests of one state before it builds the next). Each verb's test opens with a table:
state -> what a user gets. Every invocation is also checked for what none may ever show: a traceback.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import termios
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from babysit import __version__
from tests.integration.conftest import BIN, Gate, babysit, daemon_config, journal
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration]

NONE, QUEUED, RUNNING, FINISHED = "none", "queued", "running", "finished"
LIVE = (QUEUED, RUNNING)
# the state each world's task shows in `status` and `list`
STATUS = {QUEUED: "queued", RUNNING: "running", FINISHED: "completed"}
# the "holder" takes most of the small host, so a second task as big as it has to queue
BIG = ["--estimated_mem_bytes=700M", "--mem_pct_limit=100", "--estimated_cpu_cores=1"]
TINY = ["--estimated_mem_bytes=16M", "--estimated_cpu_cores=0.01", "--estimated_time=30s"]


# --- driving the CLI, on pipes or on a terminal -------------------------------------------------

TERMINAL_SIZE = (50, 200)  # rows, columns: roomy, so rich neither wraps nor cuts a table
TRACEBACK = "Traceback (most recent call last)"
# CSI and OSC sequences, and two-character escapes
ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def as_shown(raw: bytes) -> str:
    """What a terminal shows of `raw`: escapes gone, each line as its last carriage return left it."""
    text = ESCAPES.sub("", raw.decode(errors="replace")).replace("\r\n", "\n")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


@dataclass(frozen=True)
class Outcome:
    """How one `babysit` invocation ended."""

    code: int
    out: str  # stdout; on a terminal, everything the screen showed
    err: str  # stderr; on a terminal, empty: it shared the screen with stdout
    tty: bool

    @property
    def human(self) -> str:
        """Where a one-line diagnostic goes: stderr, or the screen."""
        return self.out if self.tty else self.err

    def json(self) -> Any:
        """The JSON document on stdout; on a terminal, the screen's last line (after any status line)."""
        return json.loads(self.out.strip().splitlines()[-1] if self.tty else self.out)


class Invocation:
    """A `babysit` process whose output is collected while it runs: on a pseudo-terminal, or on pipes."""

    def __init__(self, args: Sequence[str], tty: bool) -> None:
        self.args, self.tty = list(args), tty
        self.output = {"out": bytearray(), "err": bytearray()}
        argv = [str(BIN / "babysit"), *args]
        if tty:
            master, slave = os.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *TERMINAL_SIZE, 0, 0))
            self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                            env={**os.environ, "TERM": "xterm-256color"}, start_new_session=True)
            os.close(slave)  # ours closed, reading the master ends (EIO) when the process's copies close
            self.fds = {"out": master}
        else:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE)
            assert self.process.stdout and self.process.stderr
            self.fds = {"out": self.process.stdout.fileno(), "err": self.process.stderr.fileno()}
        self.readers = [threading.Thread(target=self._collect, args=(stream, fd), daemon=True)
                        for stream, fd in self.fds.items()]
        for reader in self.readers:
            reader.start()

    def _collect(self, stream: str, fd: int) -> None:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: a terminal's last writer closed it
                return
            if not chunk:
                return
            self.output[stream] += chunk

    def shown(self, stream: str = "out") -> str:
        raw = bytes(self.output[stream])
        return as_shown(raw) if self.tty else raw.decode(errors="replace")

    def expect(self, text: str, timeout: float = 30) -> None:
        """Wait until `text` is on stdout (on a terminal: on the screen) while the process runs."""
        wait_for(lambda: text in self.shown() or self.process.poll() is not None, timeout,
                 f"{text!r} from babysit {' '.join(self.args)}")
        assert text in self.shown(), f"babysit {' '.join(self.args)} ended without showing {text!r}: {self.finish()}"

    def finish(self, timeout: float = 60) -> Outcome:
        """Its exit code and output, once it ended; never a traceback."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"babysit {' '.join(self.args)} still running after {timeout}s: "
                                 f"{self.shown()!r} {self.shown('err')!r}") from None
        for reader in self.readers:
            reader.join(10)
        if self.tty:
            os.close(self.fds["out"])
        else:
            assert self.process.stdout and self.process.stderr
            self.process.stdout.close()
            self.process.stderr.close()
        outcome = Outcome(code, self.shown(), self.shown("err"), self.tty)
        assert TRACEBACK not in outcome.out + outcome.err, outcome
        return outcome


def cli(*args: str, tty: bool, timeout: float = 60) -> Outcome:
    """`babysit ARGS` to its end: through the suite's `babysit()` on pipes, or on a pseudo-terminal."""
    if tty:
        return Invocation(args, tty=True).finish(timeout)
    done = babysit(*args, timeout=timeout)
    outcome = Outcome(done.returncode, done.stdout, done.stderr, tty=False)
    assert TRACEBACK not in outcome.out + outcome.err, outcome
    return outcome


def says(outcome: Outcome, code: int, text: str) -> None:
    """Exit `code`; a refusal (2) is one human line with `text`, anything else shows `text` somewhere."""
    assert outcome.code == code, outcome
    if code == 2:
        assert text in outcome.human and len(outcome.human.strip().splitlines()) == 1, outcome
        assert outcome.tty or outcome.out == "", outcome  # nothing on stdout for a script to mistake
    else:
        assert text in outcome.out + outcome.err, outcome


# --- the states ---------------------------------------------------------------------------------


def status_of(name: str) -> str:
    return json.loads(babysit("status", f"--name={name}", "--json").stdout)["status"]


def submit(name: str, command: str, *flags: str) -> None:
    started = babysit("run", f"--name={name}", f"--command={command}", *flags)
    assert started.returncode == 0, started.stderr


def start_holder(name: str) -> None:
    """A running task that takes most of the small host and says so once in the journal."""
    submit(name, "echo holder-started; exec sleep 300", *BIG)
    assert status_of(name) == "running"
    wait_for(lambda: "holder-started" in journal(name), 15, "the holder's line in the journal")


def end(*names: str) -> None:
    """Kill these tasks (a queued one is dropped at once) and return once each is terminal."""
    for name in names:
        if babysit("kill", f"--name={name}").returncode == 0:
            babysit("wait", f"--name={name}")


@pytest.fixture(scope="module")
def small_host(daemon: str) -> Iterator[None]:
    """A 1 GiB, 2-core budget, so one "holder" task makes the next big one queue."""
    with daemon_config('mem_budget_bytes = "1G"\ncpu_budget_cores = 2\n'):
        yield
    # daemon-start sized babysit.slice to the small budget: size it to the machine again
    assert babysit("daemon-start", timeout=120).returncode == 0


@dataclass(frozen=True)
class World:
    """What exists while one state's tests run."""

    state: str
    name: str  # the task in that state; for NONE, a prefix of names no task has
    live: tuple[str, ...]  # every live task, which `list` shows


@pytest.fixture(scope="module", params=[NONE, QUEUED, RUNNING, FINISHED])
def world(request: pytest.FixtureRequest, small_host: None) -> Iterator[World]:
    """No task, a queued one (behind a running holder), a running one, or a completed one."""
    state, stem = request.param, f"m-{uuid.uuid4().hex[:8]}"
    wait_for(lambda: babysit("list", "--json").stdout.strip() == "[]", 30, "no task left live by earlier tests")
    holder, queued, done = f"{stem}-holder", f"{stem}-queued", f"{stem}-done"
    if state == NONE:
        yield World(state, stem, ())
    elif state == QUEUED:
        start_holder(holder)
        submit(queued, "echo queued-ran", *BIG, "--force")
        assert status_of(queued) == "queued"
        yield World(state, queued, (holder, queued))
        end(queued, holder)  # the queued one first, or the holder's end would start it
    elif state == RUNNING:
        start_holder(holder)
        yield World(state, holder, (holder,))
        end(holder)
    else:
        submit(done, "echo finished-output", *TINY)
        waited = babysit("wait", f"--name={done}")
        assert waited.returncode == 0, f"`echo` did not complete: {waited.stdout}"
        wait_for(lambda: "finished-output" in journal(done), 15, "the task's line in the journal")
        yield World(state, done, ())


@pytest.fixture
def target(world: World) -> str:
    """The name a test hands to the verb: the world's task, or (NONE) a name no task ever had."""
    return f"{world.name}-{uuid.uuid4().hex[:6]}" if world.state == NONE else world.name


@pytest.fixture(params=[False, True], ids=["pipes", "terminal"])
def tty(request: pytest.FixtureRequest) -> bool:
    return request.param


@dataclass(frozen=True)
class Fresh:
    """A task of one test alone: prints `started`, waits for its release, then prints `finished`."""

    name: str
    gate: Gate

    def release(self) -> None:
        self.gate.open()


@pytest.fixture
def fresh(world: World, tmp_path: Path) -> Iterator[Fresh | None]:
    """For a test that ends its task: a fresh one in the world's state, when that state is live."""
    if world.state not in LIVE:
        yield None
        return
    task = Fresh(f"fresh-{uuid.uuid4().hex[:8]}", Gate(tmp_path / "release"))
    command = f"echo started; {task.gate.then('echo finished')}"
    submit(task.name, command, *TINY, *(["--force"] if world.state == QUEUED else []))  # queued behind the big one
    assert status_of(task.name) == STATUS[world.state]
    yield task
    end(task.name)


def ended_by(task: Fresh, how: str) -> None:
    """End a fresh task the way a table says: `kill` it, or `release` it to complete."""
    if how == "kill":
        assert babysit("kill", f"--name={task.name}").returncode == 0
    else:
        task.release()


# --- the verbs ------------------------------------------------------------------------------------
# Order matters within a state: `run` comes last, because re-running the finished task's name gives
# it a newer run, which the verbs tested after it would see instead.

NO_TASK = (2, "no task named")
ALREADY_DONE = (2, "is already completed")


def test_status(world: World, target: str, tty: bool) -> None:
    for flags in ([], ["--json"]):
        shown = cli("status", f"--name={target}", *flags, tty=tty)
        if world.state == NONE:
            says(shown, *NO_TASK)
            continue
        assert shown.code == 0, shown
        if flags or not tty:  # JSON off a terminal even without --json: the caller is a program
            report = shown.json()
            assert (report["name"], report["status"]) == (target, STATUS[world.state])
        else:  # rich's key/value table
            assert re.search(rf"^\s*name\s+{re.escape(target)}\s*$", shown.out, re.M), shown.out
            assert re.search(rf"^\s*status\s+{STATUS[world.state]}\s*$", shown.out, re.M), shown.out


LIST_FORMS = {"plain": [], "all": ["--all"], "json": ["--json"], "all-json": ["--all", "--json"]}


@pytest.mark.parametrize("form", LIST_FORMS)
def test_list(world: World, tty: bool, form: str) -> None:
    # --all adds the terminal tasks: here the world's task, once it ever ran
    listed = cli("list", *LIST_FORMS[form], tty=tty)
    assert listed.code == 0, listed
    shown = set(world.live) | ({world.name} if "all" in form and world.state != NONE else set())
    if "json" in form:
        tasks = {t["name"]: t["status"] for t in listed.json()}
        if form == "json":
            assert set(tasks) == shown, tasks  # nothing but the live ones: `[]` when none is live
        assert shown <= set(tasks), tasks
        if world.name in shown:
            assert tasks[world.name] == STATUS[world.state], tasks
        return
    lines = [line for line in listed.out.splitlines() if line.strip()]
    for name in shown:
        assert any(name in line for line in lines), (name, listed.out)
    if world.name in shown:
        row = next(line for line in lines if world.name in line)
        assert STATUS[world.state] in row, row
    if world.state == FINISHED and form == "plain":
        assert world.name not in listed.out  # not live any more
    if tty:  # a rich table: a box around the header
        assert "┃" in listed.out and "name" in listed.out and "state" in listed.out, listed.out
    else:  # plain columns: a header line, then one line per task
        assert lines[0].split()[:2] == ["name", "state"], listed.out
        if form == "plain":
            assert len(lines) == 1 + len(shown), listed.out


# state: (exit code, text) for `wait_for_capacity` of a task as big as the holder, given a second
WAIT_FOR_CAPACITY = {
    NONE: (0, "capacity: available"),
    QUEUED: (1, "no room for 700M"),
    RUNNING: (1, "no room for 700M"),
    FINISHED: (0, "capacity: available"),
}


def test_wait_for_capacity(world: World, tty: bool) -> None:
    code, text = WAIT_FOR_CAPACITY[world.state]
    says(cli("wait_for_capacity", "--mem_bytes=700M", "--cpu_cores=1", "--timeout=1s", tty=tty), code, text)


# state: (how the test ends the task while `wait` blocks, exit code, the result's status)
WAIT = {
    NONE: (None, 2, None),
    QUEUED: ("kill", 1, "killed"),
    RUNNING: ("release", 0, "completed"),
    FINISHED: (None, 0, "completed"),
}


def test_wait(world: World, target: str, fresh: Fresh | None, tty: bool) -> None:
    how, code, status = WAIT[world.state]
    name = fresh.name if fresh else target
    waiting = Invocation(["wait", f"--name={name}"], tty)
    if fresh and how:
        if tty:  # the live status line on stderr says it is blocked on this task
            waiting.expect(f"{name}: {world.state}")
        ended_by(fresh, how)
    done = waiting.finish()
    if code == 2:
        says(done, *NO_TASK)
        return
    assert done.code == code, done
    result = done.json()
    assert (result["name"], result["status"]) == (name, status)
    if status == "killed":
        assert (result["kill_reason"], result["started_at"]) == ("user", None)  # dropped from the queue


# state: (exit code, the lines it prints)
LOG = {
    NONE: (2, None),
    QUEUED: (0, []),
    RUNNING: (0, ["holder-started"]),
    FINISHED: (0, ["finished-output"]),
}


def test_log(world: World, target: str, tty: bool) -> None:
    code, lines = LOG[world.state]
    shown = cli("log", f"--name={target}", tty=tty)
    if code == 2:
        says(shown, *NO_TASK)
        return
    assert shown.code == 0, shown
    assert [line for line in shown.out.splitlines() if line.strip()] == lines, shown


# state: (how the test ends the task while `log --follow` streams, exit code, the lines it prints)
FOLLOW = {
    NONE: (None, 2, None),
    QUEUED: ("kill", 0, []),
    RUNNING: ("release", 0, ["started", "finished"]),
    FINISHED: (None, 0, ["finished-output"]),
}


def test_log_follow(world: World, target: str, fresh: Fresh | None, tty: bool) -> None:
    how, code, lines = FOLLOW[world.state]
    name = fresh.name if fresh else target
    following = Invocation(["log", f"--name={name}", "--follow"], tty)
    if fresh and how:
        if lines:  # streaming: the first line shows while the task still runs
            following.expect(lines[0])
        ended_by(fresh, how)
    done = following.finish()
    if code == 2:
        says(done, *NO_TASK)
        return
    assert done.code == 0, done
    assert [line for line in done.out.splitlines() if line.strip()] == lines, done


# state: (exit code, text); a live task is a fresh one, so the world keeps its own
KILL = {
    NONE: NO_TASK,
    QUEUED: (0, "killing: {name}"),
    RUNNING: (0, "killing: {name}"),
    FINISHED: ALREADY_DONE,
}


def test_kill(world: World, target: str, fresh: Fresh | None, tty: bool) -> None:
    code, text = KILL[world.state]
    name = fresh.name if fresh else target
    says(cli("kill", f"--name={name}", tty=tty), code, text.format(name=name))
    if code == 0:
        result = json.loads(babysit("wait", f"--name={name}").stdout)
        assert (result["status"], result["kill_reason"]) == ("killed", "user")


# state: (exit code, text) for a new observability_interval
ADJUST = {
    NONE: NO_TASK,
    QUEUED: (0, "adjusted: {name}"),
    RUNNING: (0, "adjusted: {name}"),
    FINISHED: ALREADY_DONE,
}


def test_adjust(world: World, target: str, tty: bool) -> None:
    code, text = ADJUST[world.state]
    says(cli("adjust", f"--name={target}", "--observability_interval=10m", tty=tty), code, text.format(name=target))
    if code == 0:
        report = json.loads(babysit("status", f"--name={target}", "--json").stdout)
        assert report["observability_interval_s"] == 600


# verbs whose answer does not depend on the tasks: argv, and what it says (on stdout or stderr)
STEADY = {
    "ping": (["ping"], f"pong {__version__}"),
    "daemon-start": (["daemon-start"], "babysitd.service"),
    "skill-install": (["skill", "install", "--dir={dir}"], "installed"),
}


@pytest.mark.parametrize("verb", STEADY)
def test_steady_verbs(world: World, tty: bool, verb: str, tmp_path: Path) -> None:
    argv, text = STEADY[verb]
    says(cli(*(a.format(dir=tmp_path) for a in argv), tty=tty, timeout=120), 0, text)
    if verb == "skill-install":
        assert (tmp_path / "SKILL.md").is_file()


# state: (exit code, text) for running the state's task name again
RUN = {
    NONE: (0, "queued: {name}"),
    QUEUED: (2, "is still queued or running"),
    RUNNING: (2, "is still queued or running"),
    FINISHED: (0, "queued: {name}"),  # a terminal task's name may be reused
}


def test_run(world: World, target: str, tty: bool) -> None:
    code, text = RUN[world.state]
    says(cli("run", f"--name={target}", "--command=echo finished-output", *TINY, tty=tty), code,
         text.format(name=target))
    if code == 0:  # the run ends as the first did, so the world stays as it was
        assert json.loads(babysit("wait", f"--name={target}").stdout)["status"] == "completed"
