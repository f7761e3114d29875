"""A unit's final accounting: read by its own ExecStopPost, inside its cgroup, before systemd removes it.

systemd prunes a unit's cgroup as soon as its last process is gone, before it tells anyone the unit
ended, so the kernel's high-water mark and CPU total of a short or OOM-killed task cannot be read by
babysitd afterwards. ExecStopPost runs after the main process in the same cgroup, for every way a
unit ends (exit, signal, OOM, stop, timeout). It writes one small record that babysitd reads when the
unit's end is signalled, or after a restart if it was down meanwhile.
"""

from __future__ import annotations

import signal
from pathlib import Path

from babysit.core.outcome import FinalAccounting

# Runs as `sh SCRIPT_FILE RECORD MEMORY_DIR CPU_FILE...`, on every task's way out, so it costs the
# waiting user: POSIX sh builtins only (dash starts in a third of bash's time), apart from systemctl when
# a signal ended the task: a user manager that is stopping (reboot, logout, a restart of user@.service)
# stopped it, which tells such a stop from a kill nobody explains. The record is one write, read only
# once the unit is over; `parse` takes it only whole.
# systemd gives ExecStopPost the end in SERVICE_RESULT, EXIT_CODE and EXIT_STATUS.
# It is a file, not `bash -c`: systemd 252 re-reads a transient unit's command lines from the file it
# wrote them to on daemon-reload, and escapes `$`, `;` and quotes there in a way it does not undo.
SCRIPT = r"""
record=$1 mem=$2; shift 2
peak= failcnt= oom= cpu= manager=
for f in "$mem/memory.peak" "$mem/memory.max_usage_in_bytes"; do
  [ -z "$peak" ] && [ -r "$f" ] && read -r peak < "$f"
done
[ -r "$mem/memory.failcnt" ] && read -r failcnt < "$mem/memory.failcnt"
for f in "$mem/memory.events" "$mem/memory.oom_control"; do
  if [ -r "$f" ]; then while read -r k v; do [ "$k" = oom_kill ] && oom=$v; done < "$f"; fi
done
for f in "$@"; do
  [ -n "$cpu" ] || [ ! -r "$f" ] && continue
  case $f in
    *cpu.stat) while read -r k v; do [ "$k" = usage_usec ] && cpu=${v}000; done < "$f" ;;
    *) read -r cpu < "$f" ;;
  esac
done
[ "${EXIT_CODE-}" = killed ] && manager=$(timeout 5 systemctl --user is-system-running 2>/dev/null)
printf 'result=%s\nexit_code=%s\nexit_status=%s\n%s=%s\n%s=%s\n%s=%s\n%s=%s\n%s=%s\n' \
  "${SERVICE_RESULT-}" "${EXIT_CODE-}" "${EXIT_STATUS-}" peak_mem_bytes "$peak" cpu_ns "$cpu" \
  mem_failcnt "$failcnt" oom_kills "$oom" manager_state "$manager" > "$record"
"""


def install_script(directory: Path) -> Path:
    """Write the script where units can run it (atomically: running units may be using it)."""
    path = directory / "record-end.sh"
    if not path.exists() or path.read_text() != SCRIPT:
        staged = path.with_suffix(".tmp")
        staged.write_text(SCRIPT)
        staged.replace(path)
    return path


def stop_post_command(script: Path, record: Path, memory_dir: Path | None,
                      cpu_files: list[Path]) -> tuple[str, list[str], bool]:
    """The ExecStopPost entry (path, argv, ignore-failure) that writes `record` for a unit's cgroup."""
    argv = ["/bin/sh", str(script), str(record), str(memory_dir or "/nonexistent"), *map(str, cpu_files)]
    return ("/bin/sh", argv, True)  # a failed record must not change how the task's own end is judged


def _int(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def _status(exit_code: str, text: str) -> int | None:
    """EXIT_STATUS is a number for `exited`, a signal name without SIG (KILL) for `killed`/`dumped`."""
    if text.isdigit():
        return int(text)
    try:
        return int(signal.Signals[f"SIG{text}"])
    except KeyError:
        return None


def parse(text: str) -> FinalAccounting | None:
    """A record as the script writes it; None if it is not one, or not whole."""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if "result" not in fields or "manager_state" not in fields:  # its first and last lines
        return None
    exit_code = fields.get("exit_code", "")
    return FinalAccounting(fields["result"], exit_code, _status(exit_code, fields.get("exit_status", "")),
                           _int(fields.get("peak_mem_bytes", "")), _int(fields.get("cpu_ns", "")),
                           _int(fields.get("mem_failcnt", "")), _int(fields.get("oom_kills", "")),
                           fields.get("manager_state", ""))


def read(record: Path) -> FinalAccounting | None:
    try:
        return parse(record.read_text())
    except OSError:
        return None
