"""journald, as babysit needs it: when a task last wrote a line, and whether journald keeps every line.

A stall decision needs one fact, "when did this task last write", and journald already keeps it: the
task's newest entry. babysitd asks at the deadline, through the journal API (sd-journal, from
libsystemd), instead of reading every line a task prints.
"""

from __future__ import annotations

import ctypes
import json
import logging
import re
import subprocess
import time
import uuid
from pathlib import Path

from babysit.core.protocol import output_matches

log = logging.getLogger("babysitd")


ZERO = re.compile(r"0+(\.0+)?\s*[a-z]*")  # a duration or count of zero, with or without its unit
# journald.conf and its drop-ins; a drop-in in a later directory replaces one of the same name
JOURNALD_CONF = Path("/etc/systemd/journald.conf")
JOURNALD_DROP_IN_DIRS = (Path("/usr/lib/systemd/journald.conf.d"), Path("/run/systemd/journald.conf.d"),
                         Path("/etc/systemd/journald.conf.d"))


def rate_limit(texts: list[str]) -> tuple[str, str]:
    """journald's effective RateLimitIntervalSec and RateLimitBurst from its config files, in order."""
    values = {"RateLimitIntervalSec": "30s", "RateLimitBurst": "10000"}  # journald's defaults
    for text in texts:
        section = ""
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[Journal]" and "=" in line and not line.startswith(("#", ";")):
                key, value = (part.strip() for part in line.split("=", 1))
                if key in values:
                    values[key] = value or values[key]
    return values["RateLimitIntervalSec"], values["RateLimitBurst"]


def rate_limit_warning(texts: list[str]) -> str | None:
    """What to tell the user when journald may drop lines of a chatty task."""
    interval, burst = rate_limit(texts)
    if ZERO.fullmatch(interval) or ZERO.fullmatch(burst):  # either at 0 turns rate limiting off
        return None
    # systemd applies LogRateLimitIntervalSec= of system units only; for user units journald's own limit holds
    return (f"journald keeps at most about {burst} lines per {interval} of each task (its RateLimitBurst and "
            "RateLimitIntervalSec; per-unit limits do not apply to user units), so a chattier task loses lines; "
            "fix (as root): RateLimitIntervalSec=0 under [Journal] in /etc/systemd/journald.conf.d/babysit.conf, "
            "then systemctl restart systemd-journald")


def journald_config_texts() -> list[str]:
    """journald.conf, then its drop-ins in the order journald reads them."""
    drop_ins: dict[str, Path] = {}
    for directory in JOURNALD_DROP_IN_DIRS:
        if directory.is_dir():
            drop_ins.update({p.name: p for p in directory.glob("*.conf")})
    files = [JOURNALD_CONF] + [drop_ins[name] for name in sorted(drop_ins)]
    return [f.read_text(errors="replace") for f in files if f.is_file()]


SD_JOURNAL_LOCAL_ONLY, SD_JOURNAL_CURRENT_USER = 1, 8  # sd_journal_open(3)


BOOT_ID = bytes.fromhex(Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", ""))


class LastOutput:
    """When a unit last wrote to the journal: one open sd-journal handle, a query per question (microseconds).

    Where libsystemd cannot be loaded, `journalctl -n 1` answers the same question more slowly.
    """

    def __init__(self) -> None:
        self.handle = ctypes.c_void_p()
        try:
            self.lib: ctypes.CDLL | None = ctypes.CDLL("libsystemd.so.0")
            if self.lib.sd_journal_open(ctypes.byref(self.handle), SD_JOURNAL_LOCAL_ONLY | SD_JOURNAL_CURRENT_USER) < 0:
                raise OSError("sd_journal_open failed")
            # sets up the inotify watch through which sd_journal_process() learns of new journal files (the
            # user's own file may not exist yet; journald rotates and restarts)
            if self.lib.sd_journal_get_fd(self.handle) < 0:
                raise OSError("sd_journal_get_fd failed")
        except (OSError, AttributeError) as e:
            log.warning("reading the journal through journalctl instead of libsystemd (%s)", e)
            self.lib = None

    def reads_back(self, timeout_s: float = 3.0) -> bool:
        """Whether a line this user writes to the journal can be read back: not where journald keeps only
        volatile, system-wide files (Storage=volatile, no /var/log/journal) that the user may not read."""
        identifier = f"babysit-probe-{uuid.uuid4().hex[:12]}"
        wrote = subprocess.run(["systemd-cat", f"--identifier={identifier}", "echo",
                                "babysitd checks that it can read the journal back"], capture_output=True, timeout=10)
        if wrote.returncode != 0:
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.newest([f"SYSLOG_IDENTIFIER={identifier}"]) is not None:
                return True
            if self.lib is not None:  # woken by journald's next write, or at the deadline
                self.lib.sd_journal_wait(self.handle, ctypes.c_uint64(int((deadline - time.monotonic()) * 1e6)))
            else:
                time.sleep(0.1)  # journalctl: nothing to wait on
        return False

    def at(self, task: str) -> float | None:
        """When the task's newest journal entry came (time.monotonic()'s clock), or None if it has none this boot.

        journald stamps each entry with CLOCK_MONOTONIC as well as the wall clock: the monotonic stamp is
        immune to clock steps, and a suspend does not advance it."""
        return self.newest(output_matches(task))

    def newest(self, matches: list[str]) -> float | None:
        """When the newest entry of these journalctl-style matches came (see `at`)."""
        if self.lib is None:
            return last_line_at(matches)
        lib, j = self.lib, self.handle
        lib.sd_journal_process(j)  # notices journal files that were added or rotated, e.g. by a restart
        lib.sd_journal_flush_matches(j)
        for term in matches:
            added = lib.sd_journal_add_disjunction(j) if term == "+" else lib.sd_journal_add_match(
                j, term.encode(), ctypes.c_size_t(len(term.encode())))
            if added < 0:
                return None
        lib.sd_journal_seek_tail(j)
        if lib.sd_journal_previous(j) <= 0:
            return None
        usec, boot = ctypes.c_uint64(), (ctypes.c_uint8 * 16)()
        if lib.sd_journal_get_monotonic_usec(j, ctypes.byref(usec), ctypes.byref(boot)) < 0:
            return None
        return usec.value / 1e6 if bytes(boot) == BOOT_ID else None

    def close(self) -> None:
        if self.lib is not None:
            self.lib.sd_journal_close(self.handle)
            self.lib = None


def last_line_at(matches: list[str]) -> float | None:
    """The same answer from journalctl, for hosts without libsystemd."""
    out = subprocess.run(["journalctl", "--user", *matches, "--lines=1", "--output=json",
                          "--output-fields=_BOOT_ID"], capture_output=True, text=True).stdout
    try:
        entry = json.loads(out.splitlines()[-1])
        same_boot = bytes.fromhex(entry["_BOOT_ID"]) == BOOT_ID
        return int(entry["__MONOTONIC_TIMESTAMP"]) / 1e6 if same_boot else None
    except (IndexError, KeyError, ValueError, json.JSONDecodeError):
        return None
