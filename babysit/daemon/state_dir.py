"""Where babysitd keeps its state: a directory of this host's own, `<state home>/<machine id>/`.

Login nodes of a cluster share one home over NFS. With one directory per host, two babysitd never share
a SQLite file (its locking and WAL do not work across hosts) and never adopt, end or run each other's
tasks. The directory is named by the machine id (machine-id(5)), which a rename of the host (DHCP,
`hostnamectl`) does not change; the host name is only its label (a file `host` in it). The state home is
`state_dir` in config.toml, else `$XDG_STATE_HOME/babysit`, else `~/.local/state/babysit`; it and every
directory above it must be the user's or root's and not writable by others, as ssh asks of its files.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sqlite3
from pathlib import Path

from babysit.common.config import Config
from babysit.common.host import machine_id

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


def host_key() -> str:
    """What names this host's state directory: its machine id, or its host name where it has none."""
    return machine_id() or host_name()


def host_dir(settings: Config) -> Path:
    """This host's state directory: its store, its units' end records, its Slurm jobs' output."""
    return state_home(settings) / host_key()


def take_over_named_dir(settings: Config) -> Path | None:
    """Move this host's directory from when it was named by the host name (`<state home>/<host name>/`) to
    its machine id's, unless that exists already; the old path, when it was moved (a rename: atomic)."""
    named, own = state_home(settings) / host_name(), host_dir(settings)
    if named == own or own.exists() or not (named / STORE_FILE).exists():
        return None
    try:
        named.rename(own)
    except OSError as e:
        log.warning("left this host's state at %s where it is (%s); it starts with a store of its own", named, e)
        return None
    log.info("moved this host's state from %s, named by its host name, to %s, named by its machine id", named, own)
    return named


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
    """This host's state directory, made 0700 where babysit makes it, labelled with the host name. It is
    refused (Unsafe, one line) where babysit cannot make it, where it or the state home is not the user's
    own or can be written by others, or where a directory above them can be written by others than the
    user and root (as ssh checks its files): whoever can write there can change what babysit runs."""
    home, own = state_home(settings), host_dir(settings)
    check_parents(home.parent)
    take_over_named_dir(settings)
    try:
        own.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise Unsafe(f"babysitd cannot make its state directory {own}: {e.strerror}; make it, or set another "
                     "state_dir in config.toml") from None
    for directory in (home, own):
        found = directory.stat()
        if found.st_uid != os.getuid() or found.st_mode & 0o022:
            raise Unsafe(f"{directory} can be written by others than you (mode {found.st_mode & 0o777:o}, owner uid "
                         f"{found.st_uid}): babysitd will not keep its state there; run `chmod go-w {directory}` "
                         "(or set another state_dir)")
    label = own / "host"
    if not label.is_symlink() and (not label.exists() or label.read_text().strip() != socket.gethostname()):
        label.write_text(f"{socket.gethostname()}\n")
    return own


def check_parents(directory: Path) -> None:
    """Every existing directory from `directory` up to / is the user's or root's and not writable by
    others, bar sticky ones owned by root (/tmp): otherwise another user could swap what lies below."""
    for parent in (directory, *directory.parents):
        try:
            found = parent.stat()
        except FileNotFoundError:
            continue  # made by babysit, as the user, below an existing one that passed
        except OSError as e:
            raise Unsafe(f"babysitd cannot look at {parent}: {e.strerror}; set another state_dir") from None
        sticky_root = found.st_mode & 0o1000 and found.st_uid == 0
        own_group = found.st_uid == os.getuid() and found.st_gid == os.getgid()  # a user-private group
        if found.st_uid not in (0, os.getuid()) or found.st_mode & 0o002 and not sticky_root or \
                found.st_mode & 0o020 and not own_group and not sticky_root:
            raise Unsafe(f"{parent} can be written by others than you and root (mode {found.st_mode & 0o7777:o}, "
                         f"owner uid {found.st_uid}): babysitd will not keep its state below it; run "
                         f"`chmod go-w {parent}` or set another state_dir in config.toml")
