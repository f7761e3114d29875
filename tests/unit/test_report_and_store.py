import json
import sqlite3
from dataclasses import asdict
from pathlib import Path

import pytest

from babysit.core import protocol, report
from babysit.core.protocol import KillReason, NameInUse, State
from babysit.core.task import GiB, Host, Job, Outcome, Task, Usage, derive_caps, spec_from_wire
from babysit.core.timeline import Timeline
from babysit.daemon.store import SCHEMA, Store

HOST = Host(mem_bytes=16 * GiB, cores=4)


def make_spec(name: str = "job", **fields: object):  # noqa: ANN201
    return spec_from_wire({"name": name, "command": "true", "estimated_mem_bytes": "3G", **fields}, HOST)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state" / "babysit.sqlite3")


def test_kill_reports_lead_with_reason_and_hint(store: Store) -> None:
    s = make_spec()
    task = store.add(s, derive_caps(s, HOST), at=100.0)
    task = task.with_(state=State.KILLED, started_at=100.0, finished_at=160.0,
                      usage=Usage(peak_mem_bytes=int(9.1 * GiB)),
                      outcome=Outcome(State.KILLED, None, 9, KillReason.MEM_2X_SUSTAINED))
    result = report.result(task, now=200.0)
    assert list(result)[:4] == ["kill_reason", "kill_hint", "name", "status"]
    assert result["kill_hint"] == ("peak 9.1 GiB vs estimate 3 GiB: audit memory use (rolling reads, smaller "
                                   "batches), then re-run with --estimated_mem_bytes=11G")
    assert result["elapsed_s"] == 60.0
    assert protocol.complete({"name": "x"})["exit_code"] is None


def test_names_are_unique_only_among_live_runs(store: Store) -> None:
    s = make_spec()
    first = store.add(s, derive_caps(s, HOST), at=1.0)
    with pytest.raises(NameInUse):
        store.add(s, derive_caps(s, HOST), at=2.0)
    store.save(first.with_(state=State.COMPLETED, outcome=Outcome(State.COMPLETED, 0)), at=3.0)
    second = store.add(s, derive_caps(s, HOST), at=4.0)
    assert store.latest("job").id == second.id
    assert [t.state for batch in store.history() for t in batch] == [State.COMPLETED, State.QUEUED]
    assert [state for _at, state, _ in store.transitions(first)] == ["queued", "completed"]


def test_records_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "babysit.sqlite3"
    s = make_spec(estimated_time="2h")
    db = Store(path)
    task = db.add(s, derive_caps(s, HOST), at=1.0)
    db.save(task.with_(state=State.RUNNING, started_at=2.0, kill_requested=KillReason.USER), at=2.0)
    db.add_event(task, "runaway_risk", {"dim": "mem", "ratio": 1.2, "at": "t3"}, at=3.0)
    db.close()
    again = Store(path)
    (live,) = again.live()
    assert live.spec == s and live.kill_requested == KillReason.USER and live.started_at == 2.0
    assert again.events(live) == [{"event": "runaway_risk", "dim": "mem", "ratio": 1.2, "at": "t3"}]


def test_a_slurm_run_keeps_its_job_and_names_its_output_file(tmp_path: Path) -> None:
    path = tmp_path / "babysit.sqlite3"
    db = Store(path)
    s = make_spec()
    task = db.add(s, derive_caps(s, HOST), at=1.0)
    db.save(task.with_(job=Job(4711, "/home/u/out dir/job-1.out")), at=2.0)
    db.close()
    (live,) = Store(path).live()
    assert live.job == Job(4711, "/home/u/out dir/job-1.out")
    shown = report.status(live, now=3.0)
    assert (shown["unit"], shown["log_cmd"]) == ("slurm job 4711", "cat '/home/u/out dir/job-1.out'")
    assert shown["output_file"] == "/home/u/out dir/job-1.out"
    assert "output_file" not in report.status(task, now=3.0) and report.status(task, now=3.0)["unit"] == "babysit-job.service"


CANARY = "canary-5f0c1e2d-sk-live-do-not-keep"


def state_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())


def test_the_environment_is_erased_with_no_copy_left_when_the_run_ends(tmp_path: Path) -> None:
    """Seen in review: API keys in the caller's environment stayed in the store, its WAL and free pages."""
    db = Store(tmp_path / "babysit.sqlite3")
    s = make_spec(env={"API_KEY": CANARY, "PATH": "/usr/bin"})
    task = db.add(s, derive_caps(s, HOST), at=1.0)
    running = db.save(task.with_(state=State.RUNNING, started_at=2.0), at=2.0)
    assert CANARY.encode() in state_bytes(tmp_path) and dict(db.live()[0].spec.env)["API_KEY"] == CANARY
    db.save(running.with_(state=State.COMPLETED, finished_at=3.0, outcome=Outcome(State.COMPLETED, 0)), at=3.0)
    assert CANARY.encode() not in state_bytes(tmp_path)
    assert dict(db.get(task.id).spec.env) == {}
    assert (tmp_path / "babysit.sqlite3").stat().st_mode & 0o777 == 0o600


def test_an_earlier_babysits_finished_runs_lose_their_environments_at_open(tmp_path: Path) -> None:
    path = tmp_path / "babysit.sqlite3"
    db = Store(path)
    s = make_spec(env={"API_KEY": CANARY})
    done = db.add(s, derive_caps(s, HOST), at=1.0)
    db.db.execute("UPDATE tasks SET state = 'completed' WHERE id = ?", (done.id,))  # as an older babysit left it
    queued = db.add(make_spec("next", env={"TOKEN": "still-needed"}), derive_caps(s, HOST), at=2.0)
    db.close()
    again = Store(path)
    assert CANARY.encode() not in state_bytes(tmp_path)
    assert dict(again.get(queued.id).spec.env) == {"TOKEN": "still-needed"}  # it has yet to run


def test_a_database_from_before_executors_gains_the_job_column(tmp_path: Path) -> None:
    path = tmp_path / "babysit.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA.replace(",\n    job TEXT  -- babysit.core.task.Job, as JSON", ""))
    old.execute("INSERT INTO tasks (name, state, submitted_at, spec, caps, usage) VALUES (?, 'queued', 1, ?, ?, ?)",
                ("job", json.dumps(asdict(make_spec())), json.dumps(asdict(derive_caps(make_spec(), HOST))),
                 json.dumps(asdict(Usage()))))
    old.commit()
    old.close()
    (live,) = Store(path).live()
    assert live.job is None and live.name == "job"


@pytest.mark.parametrize("reason, flag", [
    (KillReason.OOM, "--estimated_mem_bytes="), (KillReason.MEM_2X_SUSTAINED, "--estimated_mem_bytes="),
    (KillReason.CPU_2X_SUSTAINED, "--estimated_cpu_cores="), (KillReason.TIMEOUT, "--estimated_time="),
    (KillReason.OBSERVABILITY_STALL, "--observability_interval=10m"), (KillReason.PRESSURE, "--estimated_mem_bytes="),
])
def test_every_kill_hint_names_a_flag_and_value(store: Store, reason: KillReason, flag: str) -> None:
    s = make_spec()
    task = store.add(s, derive_caps(s, HOST), at=0.0).with_(
        state=State.KILLED, started_at=0.0, finished_at=700.0, usage=Usage(mem_bytes=4 * GiB, peak_mem_bytes=5 * GiB,
                                                                           cpu_cores=3.2),
        outcome=Outcome(State.KILLED, None, 9, reason))
    hint = report.result(task, now=700.0)["kill_hint"]
    assert flag in hint and hint.count(".") <= 3, hint


def test_a_submission_is_found_by_its_request_id(store: Store) -> None:
    s = make_spec(request_id="3f2a-retry_1")
    task = store.add(s, derive_caps(s, HOST), at=1.0)
    assert store.by_request("3f2a-retry_1") == task
    assert store.by_request("another") is None


def test_history_queries_and_pruning(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    host = Host(16 << 30, 8)

    def finished(name: str, command: str, state: State, at: float) -> Task:
        spec = spec_from_wire({"name": name, "command": command, "cwd": "/w"}, host)
        task = store.add(spec, derive_caps(spec, host), at)
        task = store.save(task.with_(state=state, started_at=at, finished_at=at + 10,
                                     outcome=Outcome(state)), at + 10)
        store.save_timeline(task, Timeline().add(1.0, 5 << 20, 0.5, None))
        return task

    runs = [finished("train-1", "python t.py", State.COMPLETED, 100), finished("train-2", "python t.py", State.FAILED, 200),
            finished("eval", "python e.py", State.COMPLETED, 300), finished("train-3", "python t.py", State.COMPLETED, 400),
            finished("other", "python t.py", State.COMPLETED, 500)]
    assert [r.name for r in store.finished(None, 10)] == ["train-1", "train-2", "eval", "train-3", "other"]
    assert [r.name for r in store.finished("train-2", 10)] == ["train-2"]
    assert [r.name for r in store.finished(None, 2)] == ["train-3", "other"]
    (run,) = store.finished("eval", 1)
    assert (run.p95_cpu_cores, run.elapsed_s, run.state) == (0.5, 10, State.COMPLETED)
    assert store.timeline(runs[2]).points[0].mem_bytes == 5 << 20
    like = store.completed_like("train-4", "train", "python t.py", "/w", 10)
    assert [r.name for r in like] == ["train-1", "train-3", "other"]  # not the failed run, not eval
    assert store.prune(keep_runs=3, keep_s=1e9, now=600) == 2
    assert [r.name for r in store.finished(None, 10)] == ["eval", "train-3", "other"]
    assert store.prune(keep_runs=10, keep_s=150, now=600) == 2  # submitted before 450
    assert [r.name for r in store.finished(None, 10)] == ["other"]
    assert store.timeline(runs[0]) == Timeline() and store.events(runs[0]) == []


def test_a_desktop_notification_says_how_it_ended() -> None:
    host = Host(16 << 30, 8)
    spec = spec_from_wire({"name": "train", "command": "x", "estimated_mem_bytes": "1G"}, host)
    task = Task(1, spec, derive_caps(spec, host), State.KILLED, 0.0, started_at=10.0, finished_at=70.0,
                outcome=Outcome(State.KILLED, kill_reason=KillReason.OOM), usage=Usage(peak_mem_bytes=3 << 30))
    summary, body = report.notification(task)
    assert summary == "babysit: train killed (oom)" and body.startswith("peak 3 GiB vs estimate 1 GiB")
    failed = task.with_(state=State.FAILED, outcome=Outcome(State.FAILED, exit_code=3))
    assert report.notification(failed) == ("babysit: train failed", "exit code 3 after 1m")
    done = task.with_(state=State.COMPLETED, outcome=Outcome(State.COMPLETED, exit_code=0))
    assert report.notification(done) == ("babysit: train completed", "after 1m")


def test_a_history_entry_has_the_protocols_keys_in_order() -> None:
    from babysit.core.history import PastRun

    run = PastRun(id=7, name="train", command="python train.py", cwd="/data", state=State.KILLED,
                  kill_reason="timeout", exit_code=None, submitted_at=0.0, elapsed_s=12.34567,
                  peak_mem_bytes=1 << 20, p95_cpu_cores=1.23456, estimated_time_s=600.0,
                  estimated_mem_bytes=1 << 30, estimated_cpu_cores=2.0)
    entry = report.history_entry(run)
    assert tuple(entry) == protocol.HISTORY_KEYS
    assert entry["run_id"] == 7 and entry["status"] == "killed" and entry["kill_reason"] == "timeout"
    assert entry["elapsed_s"] == 12.346 and entry["p95_cpu_cores"] == 1.235
    assert entry["submitted_at"] == "1970-01-01T00:00:00.000+00:00" and entry["cwd"] == "/data"


def test_a_listed_record_cuts_a_long_command_short() -> None:
    spec = spec_from_wire({"name": "long", "command": "x" * 5000}, HOST)
    task = Task(1, spec, derive_caps(spec, HOST), State.QUEUED, 0.0)
    listed = report.listed(task, 0.0)
    assert listed["command"] == "x" * report.LISTED_COMMAND_CHARS + "…"
    assert report.status(task, 0.0)["command"] == "x" * 5000


def test_only_the_newest_damaged_stores_are_kept(tmp_path: Path) -> None:
    """Each damaged store set aside holds what its runs' environments held: they must not pile up."""
    from babysit.daemon.store import DAMAGED_KEPT, open_or_replace

    path = tmp_path / "babysit.sqlite3"
    for hour in range(6):
        path.write_bytes(b"not a database" * 100)
        db, warning = open_or_replace(path, now=1_800_000_000.0 + 3600 * hour)
        db.close()
        assert warning and "moved aside" in warning
    kept = sorted(p.name for p in tmp_path.glob("babysit.sqlite3.damaged-*"))
    assert len(kept) == DAMAGED_KEPT and kept[-1].endswith("T130000Z"), kept  # the newest ones
