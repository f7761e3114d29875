"""One state directory per host, and the store from before there was one moved into it once."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest

from babysit.common import host
from babysit.common.config import Config
from babysit.daemon import state_dir
from babysit.daemon.state_dir import STORE_FILE, host_dir, host_name, store_path, take_over_shared_store


MACHINE = "0f" * 16


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setattr(socket, "gethostname", lambda: "login1.cluster")
    machine_id = tmp_path / "machine-id"
    machine_id.write_text(f"{MACHINE}\n")
    monkeypatch.setattr(host, "MACHINE_ID_FILES", (machine_id,))
    return tmp_path / "babysit"


def shared_store(path: Path, rows: int) -> sqlite3.Connection:
    """A store as babysit made it before: WAL mode, its last changes still in the log (the connection stays
    open, as a daemon killed mid-run leaves it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY)")
    db.executemany("INSERT INTO tasks VALUES (?)", [(i,) for i in range(rows)])
    db.commit()
    return db


def test_each_host_has_a_directory_of_its_own_named_by_its_machine_id(state_home: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert store_path(Config()) == state_home / MACHINE / STORE_FILE
    own = state_dir.make_private(Config())
    assert (own / "host").read_text() == "login1.cluster\n"  # a label, for a person looking
    monkeypatch.setattr(socket, "gethostname", lambda: "renamed-by-dhcp")  # the store stays where it is
    assert state_dir.make_private(Config()) == own and (own / "host").read_text() == "renamed-by-dhcp\n"
    monkeypatch.setattr(host, "MACHINE_ID_FILES", (state_home / "none",))  # no machine id: the host name
    assert host_dir(Config()) == state_home / "renamed-by-dhcp"


def test_the_config_moves_the_state_and_keeps_it_per_host(state_home: Path) -> None:
    assert host_dir(Config(state_dir="/scratch/alice/babysit")) == Path(f"/scratch/alice/babysit/{MACHINE}")


def test_a_store_named_by_the_host_name_moves_to_the_machine_id_once(state_home: Path) -> None:
    named = state_home / "login1.cluster"
    named.mkdir(parents=True, mode=0o700)
    shared_store(named / STORE_FILE, 3).close()
    own = state_dir.make_private(Config())
    assert own == state_home / MACHINE and not named.exists()
    db = sqlite3.connect(own / STORE_FILE)
    assert db.execute("SELECT count(*) FROM tasks").fetchone() == (3,)
    db.close()
    named.mkdir(mode=0o700)
    shared_store(named / STORE_FILE, 1).close()
    state_dir.make_private(Config())  # this host has its own already: the other is left alone
    assert (named / STORE_FILE).exists()


def test_a_state_home_below_a_directory_others_may_write_is_refused(state_home: Path) -> None:
    state_home.parent.chmod(0o777)  # e.g. an NFS home made group- or world-writable
    with pytest.raises(state_dir.Unsafe, match=r"can be written by others than you and root \(mode 777"):
        state_dir.make_private(Config())
    assert not state_home.exists()
    state_home.parent.chmod(0o770)  # group-writable, by the user's own group only: as Debian makes homes
    state_dir.make_private(Config())
    state_dir.make_private(Config())


def test_a_state_home_babysit_cannot_make_is_one_line(state_home: Path) -> None:
    blocker = state_home.parent / "file"
    blocker.write_text("")
    with pytest.raises(state_dir.Unsafe, match="babysitd cannot make its state directory .*: Not a directory"):
        state_dir.make_private(Config(state_dir=str(blocker / "babysit")))


@pytest.mark.parametrize(("kernel", "directory"), [
    ("node-7", "node-7"), ("../../etc", "_.._etc"), ("a b/c", "a_b_c"), ("", "localhost"), ("...", "localhost"),
])
def test_a_host_name_is_always_one_plain_directory(monkeypatch: pytest.MonkeyPatch, kernel: str,
                                                  directory: str) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: kernel)
    assert host_name() == directory


def test_the_shared_store_moves_to_the_first_host_whole(state_home: Path) -> None:
    writer = shared_store(state_home / STORE_FILE, 100)
    assert Path(f"{state_home / STORE_FILE}-wal").stat().st_size > 0  # the rows are in the log only
    writer.close()
    moved = take_over_shared_store(Config())
    assert moved == state_home / STORE_FILE
    assert not moved.exists()
    own = sqlite3.connect(store_path(Config()))
    assert own.execute("SELECT count(*) FROM tasks").fetchone() == (100,)
    own.close()


def test_a_host_with_a_store_of_its_own_leaves_the_shared_one(state_home: Path) -> None:
    shared_store(state_home / STORE_FILE, 1).close()
    store_path(Config()).parent.mkdir(parents=True)
    store_path(Config()).write_bytes(b"")
    assert take_over_shared_store(Config()) is None
    assert (state_home / STORE_FILE).exists()


def test_a_shared_store_in_use_is_left_where_it_is(state_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    holder = shared_store(state_home / STORE_FILE, 1)
    holder.execute("BEGIN EXCLUSIVE")  # an older babysitd on another host writes to it
    try:
        assert take_over_shared_store(Config(), busy_timeout_s=0.1) is None
    finally:
        holder.rollback()
        holder.close()
    assert (state_home / STORE_FILE).exists() and not store_path(Config()).exists()
    assert "left the store of an earlier babysit" in caplog.text


def test_nothing_to_move_on_a_fresh_home(state_home: Path) -> None:
    assert take_over_shared_store(Config()) is None
    assert not state_dir.state_home(Config()).exists()


def test_the_state_directory_is_private_and_one_others_may_write_is_refused(state_home: Path) -> None:
    own = state_dir.make_private(Config())
    assert own == host_dir(Config()) and own.stat().st_mode & 0o777 == 0o700
    own.chmod(0o777)
    with pytest.raises(state_dir.Unsafe, match=r"can be written by others than you \(mode 777"):
        state_dir.make_private(Config())
