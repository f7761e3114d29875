"""What systemd and journald do not keep: runs, their specs, transitions, events and results (SQLite)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Collection, Iterator
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from babysit.core.history import PastRun, past_run
from babysit.core.stopping import Sent, stopping_from_json
from babysit.core.protocol import KillReason, NameInUse, State
from babysit.core.task import Buffering, Caps, Estimates, Job, Outcome, Spread, Task, TaskSpec, Usage
from babysit.core.timeline import Timeline
from babysit.core.workflow import workflow_from_json

LIVE = (State.QUEUED.value, State.RUNNING.value)
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    kill_requested TEXT,
    spec TEXT NOT NULL,
    caps TEXT NOT NULL,
    outcome TEXT,
    usage TEXT NOT NULL,
    job TEXT,  -- babysit.core.task.Job, as JSON
    output TEXT,  -- Task.output_file
    control TEXT  -- Task.held, .signals, its pause (paused_at, paused_by, paused_s) and .gpus, as JSON
);
-- babysitd's own settings that outlive it (draining)
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- a name is unique among runs that are not over; finished runs of it stay as history
CREATE UNIQUE INDEX IF NOT EXISTS live_name ON tasks(name) WHERE state IN {LIVE};
-- history and estimates look runs up by name, and completed ones by command and directory
CREATE INDEX IF NOT EXISTS by_name ON tasks(name, id);
CREATE INDEX IF NOT EXISTS completed_by_command
    ON tasks(json_extract(spec, '$.command'), json_extract(spec, '$.cwd'), id) WHERE state = 'completed';
-- a sweep's members are found by its name (babysit.core.workflow)
CREATE INDEX IF NOT EXISTS sweeps ON tasks(json_extract(spec, '$.workflow.group'), id);
-- a retried Run finds the run its first attempt created
CREATE INDEX IF NOT EXISTS request ON tasks(json_extract(spec, '$.request_id'));
CREATE TABLE IF NOT EXISTS transitions (
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    at REAL NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
-- a run's usage over time, bounded (babysit.timeline)
CREATE TABLE IF NOT EXISTS timelines (
    task_id INTEGER PRIMARY KEY REFERENCES tasks(id),
    data TEXT NOT NULL,
    p95_cpu_cores REAL  -- kept apart: history and estimates need only this of it
);
CREATE TABLE IF NOT EXISTS events (
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
"""


USAGE_FIELDS = {f.name for f in fields(Usage)}  # older records also kept silent_s


def _task(row: sqlite3.Row) -> Task:
    spec = json.loads(row["spec"])
    outcome = json.loads(row["outcome"]) if row["outcome"] else None
    return Task(
        id=row["id"],
        spec=TaskSpec(**{**spec, "estimates": Estimates(**spec["estimates"]),
                         "buffering": Buffering(spec.get("buffering", Buffering.LINE)),
                         "workflow": workflow_from_json(spec.get("workflow")),
                         "stopping": stopping_from_json(spec.get("stopping"))}),
        caps=Caps(**json.loads(row["caps"])),
        state=State(row["state"]),
        submitted_at=row["submitted_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        kill_requested=KillReason(row["kill_requested"]) if row["kill_requested"] else None,
        outcome=Outcome(**{
            **outcome,
            "state": State(outcome["state"]),
            "kill_reason": KillReason(outcome["kill_reason"]) if outcome["kill_reason"] else None,
            "history": Spread(**outcome["history"]) if outcome.get("history") else None,
        }) if outcome else None,
        usage=Usage(**{k: v for k, v in json.loads(row["usage"]).items() if k in USAGE_FIELDS}),
        job=Job(**json.loads(row["job"])) if row["job"] else None,
        output_file=row["output"],
        **_control(row["control"]),
    )


def _control(data: str | None) -> dict[str, Any]:
    control = json.loads(data) if data else {}
    return {"held": control.get("held", False),
            "signals": tuple(Sent(**sent) for sent in control.get("signals", ())),
            "paused_at": control.get("paused_at"), "paused_by": control.get("paused_by", ""),
            "paused_s": control.get("paused_s", 0.0), "gpus": tuple(control.get("gpus", ()))}


PAST_RUNS = "SELECT tasks.*, timelines.p95_cpu_cores FROM tasks LEFT JOIN timelines ON task_id = id"


def past(row: sqlite3.Row) -> PastRun:
    return past_run(_task(row), row["p95_cpu_cores"])


def rowid(cursor: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just made."""
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def insert(db: sqlite3.Connection, spec: TaskSpec, caps: Caps, at: float) -> int:
    """A queued run's record, inside the caller's transaction; its id."""
    cursor = db.execute(
        "INSERT INTO tasks (name, state, submitted_at, spec, caps, usage) VALUES (?, ?, ?, ?, ?, ?)",
        (spec.name, State.QUEUED.value, at, json.dumps(asdict(spec)), json.dumps(asdict(caps)),
         json.dumps(asdict(Usage()))))
    db.execute("INSERT INTO transitions (task_id, at, state) VALUES (?, ?, ?)", (rowid(cursor), at, State.QUEUED.value))
    return rowid(cursor)


def scrub(db: sqlite3.Connection) -> None:
    """Leave no copy of what was overwritten: secure_delete zeroes it in the database file, and a truncating
    checkpoint empties the write-ahead log, which still held the pages as they were."""
    with contextlib.suppress(sqlite3.OperationalError):  # busy or full: the next end scrubs again
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class Damaged(sqlite3.DatabaseError):
    """The file is not a usable database: SQLite's integrity check failed."""


class Unavailable(Exception):
    """The store cannot be opened for now (locked by another process, a full disk, an I/O error); the message
    says why. Nothing is discarded for it: the caller tries again."""


def error_name(error: sqlite3.DatabaseError) -> str:
    """SQLite's name for the error (SQLITE_BUSY, SQLITE_FULL, ...), or "" for one babysit raised itself."""
    return getattr(error, "sqlite_errorname", None) or ""


def is_damage(error: sqlite3.DatabaseError) -> bool:
    """Whether an error means the file itself is broken, rather than busy, or its disk full or failing
    ("database is locked", "disk I/O error" and "database or disk is full" are DatabaseErrors too)."""
    name = error_name(error)
    return isinstance(error, Damaged) or name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def lock_holders(path: Path) -> list[int]:
    """The processes that hold a lock on the database or its WAL files (from /proc/locks), this one aside."""
    inodes = set()
    for suffix in ("", "-wal", "-shm"):
        try:
            found = os.stat(f"{path}{suffix}")
        except OSError:
            continue
        inodes.add((os.major(found.st_dev), os.minor(found.st_dev), found.st_ino))
    holders = set()
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->" or not parts[4].isdigit():
            continue
        major, minor, inode = parts[5].split(":")
        if (int(major, 16), int(minor, 16), int(inode)) in inodes and int(parts[4]) != os.getpid():
            holders.add(int(parts[4]))
    return sorted(holders)


def unavailable_because(path: Path, error: sqlite3.DatabaseError) -> str:
    """What keeps the store from opening or taking writes, in words a user can act on."""
    name = error_name(error)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        holders = lock_holders(path)
        named = ", ".join(f"PID {pid} ({process_name(pid)})" for pid in holders)
        return f"the store {path} is locked by {named or 'another process'}"
    if name.startswith("SQLITE_FULL"):
        return f"no space left under {path.parent} for the store"
    if name.startswith("SQLITE_IOERR"):
        return f"a disk I/O error under {path.parent} ({error})"
    return f"the store {path} cannot be used: {error}"


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def open_or_replace(path: Path, now: float, busy_timeout_s: float = 5.0) -> tuple[Store, str | None]:
    """The store at `path`; a damaged one is moved aside (kept) and replaced by a fresh one, with a warning.

    A supervisor that cannot read its records must still supervise: the tasks are systemd units, and
    babysitd takes up the ones still running from their unit Descriptions. A store that is only locked,
    or on a full or failing disk, is not damaged: Unavailable says why, and nothing is moved.
    """
    try:
        return Store(path, busy_timeout_s), None
    except sqlite3.DatabaseError as e:
        if not is_damage(e):
            raise Unavailable(unavailable_because(path, e)) from e
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = path.with_name(f"{path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{path}{suffix}").exists():
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        # each holds what the callers' environments held: keep few
        aside_before = path.parent.glob(f"{path.name}.damaged-*")
        stamps = sorted({p.name.removeprefix(f"{path.name}.damaged-")[:16] for p in aside_before})  # 20261206T101500Z
        for old in stamps[:-DAMAGED_KEPT]:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}.damaged-{old}{suffix}").unlink(missing_ok=True)
        return Store(path, busy_timeout_s), (
            f"the state database was damaged ({e}) and was moved aside to {aside}; babysit started a fresh one: "
            "earlier runs are not in the history, and running tasks were taken up again from systemd")


DAMAGED_KEPT = 3  # damaged stores set aside (each with its -wal and -shm): the newest are kept


class Store:
    """One SQLite database; every write is one transaction."""

    def __init__(self, path: Path, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_s)
        try:
            path.chmod(0o600)  # also a file an older babysit made with the user's umask
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA secure_delete=ON")  # see scrub
            (check,) = self.db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise Damaged(f"quick_check: {check}")
            self.db.executescript(SCHEMA)
            columns = {column["name"] for column in self.db.execute("PRAGMA table_info(tasks)")}
            if "job" not in columns:
                self.db.execute("ALTER TABLE tasks ADD COLUMN job TEXT")  # a database from before executors
            if "output" not in columns:
                self.db.execute("ALTER TABLE tasks ADD COLUMN output TEXT")  # ...and from before output files
            if "control" not in columns:
                self.db.execute("ALTER TABLE tasks ADD COLUMN control TEXT")  # ...and from before hold and signals
            self.erase_old_environments()
            self.settings = Settings(self.db)
            self.sweeps = Sweeps(self.db)
        except sqlite3.DatabaseError:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def erase_old_environments(self) -> None:
        """Finished runs stored by an earlier babysit kept the caller's environment: erase it, and rewrite
        the file (VACUUM), whose free pages still held it. Once; a store without any is left alone."""
        erased = self.db.execute(
            "UPDATE tasks SET spec = json_set(spec, '$.env', json('{}')) WHERE state NOT IN ('queued', 'running') "
            "AND json_extract(spec, '$.env') != '{}'").rowcount
        if erased:
            self.db.execute("VACUUM")
            scrub(self.db)

    def add(self, spec: TaskSpec, caps: Caps, at: float) -> Task:
        """A new queued run; NameInUse while another run of the name is not over."""
        return self.add_all([spec], [caps], at)[0]

    def add_all(self, specs: list[TaskSpec], caps: list[Caps], at: float) -> list[Task]:
        """New queued runs in one transaction (a sweep's members): all of them, or none (NameInUse)."""
        try:
            with self.db:
                self.db.execute("BEGIN")
                ids = [insert(self.db, spec, cap, at) for spec, cap in zip(specs, caps, strict=True)]
        except sqlite3.IntegrityError:
            live = (s.name for s in specs
                    if self.db.execute(f"SELECT 1 FROM tasks WHERE name = ? AND state IN {LIVE}", (s.name,)).fetchone())
            raise NameInUse.of(next(live, specs[0].name)) from None
        return [self.get(task_id) for task_id in ids]

    def add_running(self, spec: TaskSpec, caps: Caps, run_id: int | None, started_at: float) -> Task:
        """A run found running without a record (the records were lost), under its own id where it is free."""
        with self.db:
            self.db.execute("BEGIN")
            cursor = self.db.execute(
                "INSERT INTO tasks (id, name, state, submitted_at, started_at, spec, caps, usage) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, spec.name, State.RUNNING.value, started_at, started_at, json.dumps(asdict(spec)),
                 json.dumps(asdict(caps)), json.dumps(asdict(Usage()))),
            )
            self.db.execute("INSERT INTO transitions (task_id, at, state, detail) VALUES (?, ?, ?, ?)",
                            (rowid(cursor), started_at, State.RUNNING.value, "taken up from its unit without a record"))
        return self.get(rowid(cursor))

    def name_of(self, run_id: int) -> str | None:
        """The task name of a run, if there is a record of it."""
        row = self.db.execute("SELECT name FROM tasks WHERE id = ?", (run_id,)).fetchone()
        return row["name"] if row else None

    def save(self, task: Task, at: float, detail: str = "", timeline: Timeline | None = None,
             following: tuple[TaskSpec, Caps] | None = None) -> Task:
        """Write a run's current record (and its timeline, when given); a change of state is also logged
        as a transition. One transaction: a run's end is one commit, with its next attempt where it is
        retried (`following`), so no end is stored that promises an attempt that does not exist."""
        # the caller's environment (API keys, tokens) is kept only while the run may still need it
        spec = replace(task.spec, env={}) if task.state.terminal else task.spec
        with self.db:
            self.db.execute("BEGIN")
            (old_state,) = self.db.execute("SELECT state FROM tasks WHERE id = ?", (task.id,)).fetchone()
            self.db.execute(
                "UPDATE tasks SET state=?, started_at=?, finished_at=?, kill_requested=?, spec=?, caps=?, "
                "outcome=?, usage=?, job=?, output=?, control=? WHERE id=?",
                (task.state.value, task.started_at, task.finished_at,
                 task.kill_requested.value if task.kill_requested else None, json.dumps(asdict(spec)),
                 json.dumps(asdict(task.caps)), json.dumps(asdict(task.outcome)) if task.outcome else None,
                 json.dumps(asdict(task.usage)), json.dumps(asdict(task.job)) if task.job else None,
                 task.output_file, json.dumps({"held": task.held, "signals": [asdict(s) for s in task.signals],
                                               "paused_at": task.paused_at, "paused_by": task.paused_by,
                                               "paused_s": task.paused_s, "gpus": list(task.gpus)}),
                 task.id),
            )
            if old_state != task.state.value:
                self.db.execute("INSERT INTO transitions (task_id, at, state, detail) VALUES (?, ?, ?, ?)",
                                (task.id, at, task.state.value, detail))
            if timeline is not None:
                self.save_timeline(task, timeline)
            if following:
                insert(self.db, *following, at)
        if task.spec.env and spec is not task.spec:
            scrub(self.db)
        return task

    def get(self, task_id: int) -> Task:
        return _task(self.db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone())

    def find(self, task_id: int) -> Task | None:
        row = self.db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return _task(row) if row else None

    def latest(self, name: str) -> Task | None:
        """The newest run of a name."""
        row = self.db.execute("SELECT * FROM tasks WHERE name = ? ORDER BY id DESC LIMIT 1", (name,)).fetchone()
        return _task(row) if row else None

    def after(self, run_id: int, name: str) -> Task | None:
        """The next run of a name after `run_id` (the next attempt of a run that was retried)."""
        row = self.db.execute("SELECT * FROM tasks WHERE name = ? AND id > ? ORDER BY id LIMIT 1",
                              (name, run_id)).fetchone()
        return _task(row) if row else None

    def by_request(self, request_id: str) -> Task | None:
        """The run a client's submission created, if it did."""
        row = self.db.execute("SELECT * FROM tasks WHERE json_extract(spec, '$.request_id') = ?",
                              (request_id,)).fetchone()
        return _task(row) if row else None

    def live(self) -> list[Task]:
        """Queued and running runs, in submission order."""
        # row by row: the rows' text and the tasks made of it are never all in memory at once
        return [_task(r) for r in self.db.execute(f"SELECT * FROM tasks WHERE state IN {LIVE} ORDER BY id")]

    def history(self, batch: int = 100, newest: int = -1) -> Iterator[list[Task]]:
        """Every run (or the `newest`), oldest first, `batch` at a time."""
        rows = self.db.execute("SELECT * FROM (SELECT * FROM tasks ORDER BY id DESC LIMIT ?) ORDER BY id",
                               (newest,)).fetchall()  # all read at once: no statement left open meanwhile
        for start in range(0, len(rows), batch):
            yield [_task(r) for r in rows[start:start + batch]]

    def save_timeline(self, task: Task, timeline: Timeline) -> None:
        self.db.execute("INSERT OR REPLACE INTO timelines (task_id, data, p95_cpu_cores) VALUES (?, ?, ?)",
                        (task.id, json.dumps(timeline.to_json()), timeline.p95_cpu_cores()))

    def timeline(self, task: Task) -> Timeline:
        row = self.db.execute("SELECT data FROM timelines WHERE task_id = ?", (task.id,)).fetchone()
        return Timeline.from_json(json.loads(row["data"])) if row else Timeline()

    def finished(self, name: str | None, limit: int) -> list[PastRun]:
        """The newest `limit` finished runs (of one name, or of all), oldest first."""
        where, args = ("name = ? AND ", (name,)) if name else ("", ())
        rows = self.db.execute(f"{PAST_RUNS} WHERE {where}state NOT IN {LIVE} ORDER BY id DESC LIMIT ?",
                               (*args, limit)).fetchall()
        return [past(r) for r in reversed(rows)]

    def completed_like(self, name: str, stem: str, command: str, cwd: str, each: int) -> list[PastRun]:
        """Where a new run's kin are (babysit.core.history.kin): the newest `each` completed runs of its name, of
        names from its stem on, and of its command in its directory; oldest first."""
        relations = [("name = ?", (name,)), ("name >= ? AND name < ?", (stem, stem + "\U0010ffff")),
                     ("json_extract(spec, '$.command') = ? AND json_extract(spec, '$.cwd') = ?", (command, cwd))]
        found: dict[int, sqlite3.Row] = {}
        for where, args in relations:  # the literal state lets SQLite use the partial index
            for row in self.db.execute(f"{PAST_RUNS} WHERE state = 'completed' AND {where} ORDER BY id DESC "
                                       "LIMIT ?", (*args, each)):
                found[row["id"]] = row
        return [past(found[i]) for i in sorted(found)]

    def prune(self, keep_runs: int, keep_s: float, now: float, needed: Collection[int] = ()) -> int:
        """Forget finished runs beyond the newest `keep_runs`, or older than `keep_s`, but those `needed`
        (runs queued tasks wait on, runs whose end is not let go of yet); how many went."""
        pruned = (f"SELECT id FROM tasks WHERE state NOT IN {LIVE} AND (submitted_at < ? OR id NOT IN "
                  f"(SELECT id FROM tasks WHERE state NOT IN {LIVE} ORDER BY id DESC LIMIT ?)) "
                  "AND id NOT IN (SELECT value FROM json_each(?))")
        with self.db:
            self.db.execute("BEGIN")
            for table, key in (("transitions", "task_id"), ("events", "task_id"), ("timelines", "task_id"),
                               ("tasks", "id")):  # the runs last: the others are found through them
                gone = self.db.execute(f"DELETE FROM {table} WHERE {key} IN ({pruned})",
                                       (now - keep_s, keep_runs, json.dumps(sorted(needed))))
        return gone.rowcount

    def add_event(self, task: Task, kind: str, data: dict[str, Any], at: float) -> None:
        self.db.execute("INSERT INTO events (task_id, at, kind, data) VALUES (?, ?, ?, ?)",
                        (task.id, at, kind, json.dumps(data)))

    def events(self, task: Task) -> list[dict[str, Any]]:
        """A run's events, and its earlier attempts' (a retry's first attempt to the run itself)."""
        first = task.spec.workflow.first_run or task.id
        rows = self.db.execute("SELECT kind, at, data FROM events WHERE task_id BETWEEN ? AND ? AND task_id IN "
                               "(SELECT id FROM tasks WHERE name = ?) ORDER BY rowid", (first, task.id, task.name))
        return [{"event": kind, **json.loads(data)} for kind, _at, data in rows]

    def transitions(self, task: Task) -> list[tuple[float, str, str]]:
        rows = self.db.execute("SELECT at, state, detail FROM transitions WHERE task_id = ? ORDER BY rowid",
                               (task.id,))
        return [tuple(r) for r in rows]



class Settings:
    """babysitd's own settings that outlive it (draining), in the store's database."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else None

    def set(self, key: str, value: str | None) -> None:
        """Keep a setting (None: forget it)."""
        if value is None:
            self.db.execute("DELETE FROM settings WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                            "value = excluded.value", (key, value))


class Sweeps:
    """The runs of sweeps, found by the sweep's name (the `sweeps` index) and submission."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def members(self, group: str, sweep: str | None = None) -> list[Task]:
        """The newest sweep of that name (or the one submitted as `sweep`): each member's latest run, by index."""
        if sweep is None:
            newest = self.newest(group)
            if newest is None:
                return []
            sweep = newest.spec.workflow.sweep
        latest: dict[str, Task] = {}
        for r in self.db.execute("SELECT * FROM tasks WHERE json_extract(spec, '$.workflow.group') = ? AND "
                                 "json_extract(spec, '$.workflow.sweep') = ? ORDER BY id", (group, sweep)):
            latest[r["name"]] = _task(r)
        return sorted(latest.values(), key=lambda t: t.spec.workflow.index or 0)

    def newest(self, group: str) -> Task | None:
        """The newest run of any member of a sweep of that name."""
        row = self.db.execute("SELECT * FROM tasks WHERE json_extract(spec, '$.workflow.group') = ? ORDER BY id DESC "
                              "LIMIT 1", (group,)).fetchone()
        return _task(row) if row else None

    def states(self, group: str, sweep: str) -> dict[str, tuple[int, State, bool]]:
        """Each member's latest run of one submission of a sweep: its id, its state, and whether another
        attempt follows it. No record is read whole: a task waiting for a sweep of thousands asks often."""
        latest: dict[str, tuple[int, State, bool]] = {}
        for name, run_id, state, following in self.db.execute(
                "SELECT name, id, state, coalesce(json_extract(outcome, '$.next_attempt'), 0) FROM tasks "
                "WHERE json_extract(spec, '$.workflow.group') = ? AND json_extract(spec, '$.workflow.sweep') = ? "
                "ORDER BY id", (group, sweep)):
            latest[name] = (run_id, State(state), bool(following))
        return latest
