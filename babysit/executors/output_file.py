"""A run's output as a file that babysit reads: a Slurm job's, or a unit's on a host whose journald keeps no
output the user can read back. Its last change is when the run last wrote; it is kept bounded."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Collection
from pathlib import Path

MAX_BYTES = 16 << 20  # past this, the older half goes
KEPT_FILES = 200  # the output files of the newest runs are kept: they are those runs' logs


def written_at(path: Path) -> float | None:
    """The file's last change on time.monotonic()'s clock (its stamp is the file system's wall clock, put on
    the monotonic one by how long ago it was); None before the run wrote anything."""
    with contextlib.suppress(OSError):
        return time.monotonic() - max(0.0, time.time() - os.stat(path).st_mtime)
    return None


def bound(path: Path, most: int = MAX_BYTES) -> None:
    """Keep the newest half of a file that grew past `most`; the writer appends (O_APPEND) and goes on."""
    with contextlib.suppress(OSError), path.open("r+b") as file:
        size = file.seek(0, os.SEEK_END)
        if size <= most:
            return
        file.seek(size - most // 2)
        newest = file.read()
        newest = newest[newest.find(b"\n") + 1:]  # from a whole line
        file.truncate(0)
        file.seek(0)
        file.write(b"[babysit: earlier output dropped, this file keeps the newest %d bytes]\n" % len(newest) + newest)


def prune(directory: Path, live: Collection[str], kept: int = KEPT_FILES) -> None:
    """Remove all but the newest `kept` output files of finished runs; those of `live` runs (paths) stay,
    however quiet: a file babysit removed would make its run look silent, and be stopped as stalled."""
    with contextlib.suppress(OSError):
        finished = [p for p in directory.glob("*.out") if str(p) not in live]
        for old in sorted(finished, key=lambda p: p.stat().st_mtime)[:-kept]:
            old.unlink(missing_ok=True)
