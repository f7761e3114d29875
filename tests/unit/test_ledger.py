"""The ledger when the store takes no writes: SQLite's own "database or disk is full" (its page limit
reached, as a full disk would), changes kept in order, a finished run still found, new runs refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from babysit.core.protocol import State, StoreUnavailable
from babysit.core.task import GiB, Host, Outcome, derive_caps, spec_from_wire
from babysit.daemon.ledger import Ledger
from babysit.daemon.store import Store

HOST = Host(mem_bytes=8 * GiB, cores=4.0)


def full(db: Store) -> None:
    """The store takes no page more than it has: SQLite answers SQLITE_FULL, as on a full disk."""
    (pages,) = db.db.execute("PRAGMA page_count").fetchone()
    db.db.execute(f"PRAGMA max_page_count = {pages}")


def room_again(db: Store) -> None:
    db.db.execute("PRAGMA max_page_count = 1073741823")


def test_a_store_that_takes_no_writes_loses_no_result(tmp_path: Path) -> None:
    db = Store(tmp_path / "babysit.sqlite3")
    ledger = Ledger(db)
    spec = spec_from_wire({"name": "train", "command": "python train.py"}, HOST)
    task = ledger.add(spec, derive_caps(spec, HOST))
    running = ledger.save(task.with_(state=State.RUNNING, started_at=1.0))
    full(db)
    for i in range(40):  # events until a page is needed
        ledger.add_event(running, "runaway_risk", {"n": i, "padding": "x" * 2000})
    assert ledger.pending and "no space left under" in ledger.unwritable
    finished = ledger.save(running.with_(state=State.COMPLETED, outcome=Outcome(State.COMPLETED, 0), finished_at=2.0))
    ledger.forget(finished)
    assert ledger.latest("train") == finished  # a waiter's Status still finds the result
    assert db.latest("train").state == State.RUNNING  # which is not stored yet
    with pytest.raises(StoreUnavailable, match="no space left under"):
        ledger.add(spec_from_wire({"name": "next", "command": "true"}, HOST), derive_caps(spec, HOST))

    ledger.retry()  # still full: nothing is lost, nothing reordered
    assert ledger.pending and ledger.latest("train") == finished
    room_again(db)
    ledger.retry()
    assert not ledger.pending and not ledger.unwritable
    stored = db.latest("train")
    assert stored and stored.state == State.COMPLETED and len(db.events(stored)) == 40
    assert [e["n"] for e in db.events(stored)] == list(range(40))
    ledger.add(spec_from_wire({"name": "next", "command": "true"}, HOST), derive_caps(spec, HOST))
    db.close()
