"""Where babysitd keeps its state: a directory of this host's own, `<state home>/babysit/<host name>/`.

Login nodes of a cluster share one home over NFS. With one directory per host, two babysitd never share
a SQLite file (its locking and WAL do not work across hosts) and never adopt, end or run each other's
tasks. The state home is `state_dir` in config.toml, else `$XDG_STATE_HOME/babysit`, else
`~/.local/state/babysit`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sqlite3
from pathlib import Path

from babysit.common.config import Config

log = logging.getLogger("babysitd")
STORE_FILE = "babysit.sqlite3"


def host_name() -> str:
    """This host's name as a directory name (the kernel's hostname, which login nodes do not share)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()).lstrip(".")
    return name or "localhost"


def state_home(settings: Config) -> Path:
    """Where the state of every host lives: the config's `state_dir`, else under XDG_STATE_HOME."""
    if settings.state_dir:
        return Path(settings.state_dir).expanduser()
    return Path(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "babysit")


def host_dir(settings: Config) -> Path:
    """This host's state directory: its store, its units' end records, its Slurm jobs' output."""
    return state_home(settings) / host_name()


def store_path(settings: Config) -> Path:
    return host_dir(settings) / STORE_FILE


def take_over_shared_store(settings: Config, busy_timeout_s: float = 5.0) -> Path | None:
    """Move a store from before there was one per host (`<state home>/babysit.sqlite3`) into this host's
    directory, unless this host has a store already; the old path, when it was moved.

    The first host to start takes it: a rename is atomic, also on NFS, so no two hosts get it. Its
    write-ahead log is folded in first, so one file holds every committed change.
    """
    shared, own = state_home(settings) / STORE_FILE, store_path(settings)
    if own.exists() or not shared.exists():
        return None
    try:
        db = sqlite3.connect(shared, timeout=busy_timeout_s)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("PRAGMA journal_mode=DELETE")
        finally:
            db.close()
        own.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        shared.rename(own)
    except FileNotFoundError:
        return None  # another host took it meanwhile
    except (sqlite3.Error, OSError) as e:
        log.warning("left the store of an earlier babysit at %s where it is (%s); this host starts with a store "
                    "of its own", shared, e)
        return None
    return shared


class Unsafe(Exception):
    """The state directory may be written by others; the message says which and how to fix it."""


def make_private(settings: Config) -> Path:
    """This host's state directory, made 0700 where babysit makes it; one that another user may write (or
    owns) is refused: whoever can write there can change what babysit runs."""
    own = host_dir(settings)
    own.mkdir(mode=0o700, parents=True, exist_ok=True)
    for directory in (state_home(settings), own):
        found = directory.stat()
        if found.st_uid != os.getuid() or found.st_mode & 0o022:
            raise Unsafe(f"{directory} can be written by others than you (mode {found.st_mode & 0o777:o}, owner uid "
                         f"{found.st_uid}): babysitd will not keep its state there; run `chmod go-w {directory}` "
                         "(or set another state_dir)")
    return own
