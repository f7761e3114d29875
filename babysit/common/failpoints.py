"""Faults a test can inject into a running babysitd, to prove that it survives them.

Off unless babysitd's environment names a directory in BABYSIT_FAILPOINTS_DIR. A fault point is armed
while a file of its name exists there; the file lists the task names it applies to (empty: any).
A `once` point removes its file when it fires.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_VARIABLE = "BABYSIT_FAILPOINTS_DIR"


class InjectedFault(RuntimeError):
    """A fault a test asked for."""


def check(point: str, subject: str = "", once: bool = False) -> None:
    """Raise InjectedFault when `point` is armed (for `subject`, if the point lists names)."""
    directory = os.environ.get(DIR_VARIABLE)
    if not directory:
        return
    armed = Path(directory, point)
    try:
        names = armed.read_text().split()
    except OSError:
        return
    if names and subject not in names:
        return
    if once:
        armed.unlink(missing_ok=True)
    raise InjectedFault(f"fault point {point} fired" + (f" for {subject}" if subject else ""))


def armed(point: str, subject: str = "") -> bool:
    """Whether `point` is armed (for `subject`), for a fault that is not an exception (a lost signal)."""
    try:
        check(point, subject)
    except InjectedFault:
        return True
    return False


def crash(point: str, subject: str = "") -> None:
    """End babysitd at once, as a crash would, when the `once` point is armed (for `subject`)."""
    with contextlib.suppress(InjectedFault):
        check(point, subject, once=True)
        return
    os._exit(1)
