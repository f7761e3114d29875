"""`babysit daemon-start`: install the user unit, slice and D-Bus activation file, then start babysitd."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from babysit.cli.client import DBUS, Client, DaemonNotRunning
from babysit.common import config
from babysit.common.host import read_host
from babysit.core.protocol import BUS_NAME, DAEMON_UNIT

SYSTEMD = "org.freedesktop.systemd1"


def source_file(relative: str) -> Path:
    """A file shipped with babysit: beside the package in a checkout, inside it in a wheel."""
    package = Path(__file__).resolve().parents[1]  # babysit/
    for candidate in (package.parent / relative, package / "_data" / relative):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"babysit installation is missing {relative}")


def daemon_command() -> str:
    """How systemd and the bus start this installation's daemon."""
    return f"{sys.executable} -m babysit.daemon"


def targets() -> dict[str, Path]:
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share")
    return {
        "units/babysitd.service": config / "systemd/user/babysitd.service",
        "units/babysit.slice": config / "systemd/user/babysit.slice",
        "dbus/org.babysit.service": data / "dbus-1/services/org.babysit.service",
    }


def placeholders() -> dict[str, str]:
    """What the shipped templates leave to the installation: the daemon's command, the slice's budget."""
    host = read_host(config.load())
    return {"@BABYSITD@": daemon_command(), "@MEMORY_MAX@": str(host.mem_bytes),
            "@CPU_QUOTA@": f"{host.cores * 100:.0f}"}


def install_files() -> list[Path]:
    """Write the files for this installation; returns the ones that changed."""
    changed = []
    values = placeholders()
    for relative, target in targets().items():
        text = source_file(relative).read_text()
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        if not target.exists() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            changed.append(target)
    return changed


def installed() -> bool:
    """Whether this user has babysitd's unit and activation file."""
    return all(target.exists() for target in targets().values())


def lingering() -> bool:
    return Path("/var/lib/systemd/linger", os.environ.get("USER") or str(os.getuid())).exists()


async def install_and_start(client: Client, quiet: bool = False) -> None:
    """Idempotent: files refreshed, systemd and the bus reloaded, the daemon started through activation."""
    for path in install_files():
        if not quiet:
            typer.echo(f"installed {path}")
    await client.call("Reload", destination=SYSTEMD, path="/org/freedesktop/systemd1",
                      interface=f"{SYSTEMD}.Manager", timeout=60)
    await client.call("ReloadConfig", destination=DBUS, path="/org/freedesktop/DBus", interface=DBUS)
    try:  # a daemon that hit systemd's restart limit stays down until its failure is reset
        await client.call("ResetFailedUnit", "s", [DAEMON_UNIT], destination=SYSTEMD,
                          path="/org/freedesktop/systemd1", interface=f"{SYSTEMD}.Manager")
    except DaemonNotRunning:
        pass  # not loaded: nothing to reset
    await client.call("StartServiceByName", "su", [BUS_NAME, 0], destination=DBUS,
                      path="/org/freedesktop/DBus", interface=DBUS, timeout=60)
    (version,) = await client.call("Ping", autostart=False)
    (capacity,) = await client.call("Capacity")
    say = (lambda text: typer.echo(text, err=True)) if quiet else typer.echo
    if not quiet:
        say(f"babysitd {version} running ({DAEMON_UNIT}); its log: journalctl --user -u {DAEMON_UNIT}")
    for warning in capacity.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)
    if not lingering():
        say("note: tasks end when you log out; to keep them running: loginctl enable-linger $USER")


def why_not_running() -> str:
    """What systemd and the daemon's journal say about a babysitd that is not answering, or ""."""
    try:
        shown = subprocess.run(["systemctl", "--user", "show", DAEMON_UNIT,
                                "--property=ActiveState,SubState,Result,NRestarts"],
                               capture_output=True, text=True, timeout=10).stdout
        state = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
        # Result is reset to success at each new start attempt, so a daemon that keeps failing shows
        # "success" during its attempts: NRestarts tells it apart from one that simply never started.
        crashing = state.get("Result") != "success" or state.get("NRestarts", "0") != "0"
        starting = state.get("ActiveState") == "activating" and state.get("SubState") == "start"
        if state.get("ActiveState") not in ("failed", "activating", "inactive") or not (crashing or starting):
            return ""  # (a first start still under way says why it waits: a locked store, say)
        # its own lines only: systemd's about the restarts would push the reason out of the tail
        tail = subprocess.run(["journalctl", "--user", "--identifier=babysitd", "-n", "5", "-o", "cat", "--no-pager"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = [f"babysitd is {state.get('ActiveState')} ({state.get('SubState')}; last result: "
             f"{state.get('Result')}, restarts: {state.get('NRestarts', '?')})"]
    if tail:
        lines += ["its last log lines:", *(f"  {line}" for line in tail.splitlines())]
    lines.append(f"more: systemctl --user status {DAEMON_UNIT}; journalctl --user -u {DAEMON_UNIT}")
    return "\n".join(lines)
