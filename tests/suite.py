#!/usr/bin/env python3
"""The whole suite from a fresh clone, in one command (stdlib only: it runs before any virtualenv).

    python3 tests/suite.py [PYTEST ARG...]

1. The Debian packages the suite needs: when this machine lacks some, it names them with the line that
   installs them, and exits 2 (it installs nothing system-wide itself).
2. `.venv`, with babysit and its test extras, when it is missing or older than pyproject.toml; made from
   Debian's /usr/bin/python3 where there is one (the private session's test user cannot run an
   interpreter kept under root's home). `.wheelhouse` holds babysit and its dependencies as wheels, for
   the test that installs babysit as a user would; babysit's own wheel is rebuilt on every run.
3. pytest inside a real user session (tests/session/run.py): pure tests, then integration tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
WHEELHOUSE = ROOT / ".wheelhouse"
STAMP = VENV / ".babysit-test-extras"  # written once the extras are in, so a change of pyproject.toml shows
SESSION_TIMEOUT_S = 1500
EXIT_USAGE = 2

# what the suite uses -> the Debian package that brings it
NEEDED = {
    "systemctl": "systemd",
    "dbus-daemon": "dbus",
    "/usr/lib/systemd/user/dbus.socket": "dbus-user-session",
    "unshare": "util-linux",
    "stdbuf": "coreutils",
    "stress-ng": "stress-ng",
    "gcc": "gcc",
    "/usr/include/stdio.h": "libc6-dev",
    "tmux": "tmux",
}


def say(message: str) -> None:
    print(f"suite: {message}", file=sys.stderr, flush=True)


def missing_packages(python: str) -> list[str]:
    missing = [package for thing, package in NEEDED.items()
               if not (Path(thing).exists() if thing.startswith("/") else shutil.which(thing))]
    if not VENV.exists() and subprocess.run([python, "-c", "import ensurepip, venv"], capture_output=True).returncode:
        missing.append(f"python{sys.version_info.major}-venv")
    return sorted(set(missing))


def interpreter() -> str:
    """Debian's Python when it is new enough, else this one."""
    system = "/usr/bin/python3"
    if Path(system).exists():
        found = subprocess.run([system, "-c", "import sys; print(sys.version_info >= (3, 11))"], capture_output=True,
                               text=True)
        if found.stdout.strip() == "True":
            return system
    return sys.executable


def pip(*args: str) -> None:
    subprocess.run([str(VENV / "bin/pip"), "-q", "--disable-pip-version-check", *args], cwd=ROOT, check=True)


def prepare(python: str) -> None:
    """The virtualenv with the test extras, and the wheelhouse, as this checkout needs them now."""
    if not (VENV / "bin/python").exists():
        say(f"creating {VENV.name} from {python}")
        subprocess.run([python, "-m", "venv", str(VENV)], check=True)
    if not STAMP.exists() or STAMP.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        say("installing babysit with its test extras into .venv")
        pip("install", "-e", ".[test]")
        pip("wheel", "-w", str(WHEELHOUSE), ".")
        STAMP.touch()
    else:  # the dependencies' wheels stay; babysit's own follows the checkout
        for old in WHEELHOUSE.glob("babysit-*.whl"):
            old.unlink()
        pip("wheel", "--no-deps", "-w", str(WHEELHOUSE), ".")
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    if os.geteuid() == 0:  # the private session's test user runs them
        subprocess.run(["chmod", "-R", "a+rX", str(VENV), str(WHEELHOUSE)], check=True)


def main(pytest_args: list[str]) -> int:
    python = interpreter()
    missing = missing_packages(python)
    if missing:
        say(f"missing Debian packages: {' '.join(missing)}")
        say(f"install them with: sudo apt-get install {' '.join(missing)}")
        return EXIT_USAGE
    prepare(python)
    runner = [sys.executable, "tests/session/run.py", "--timeout", str(SESSION_TIMEOUT_S), ".venv/bin/pytest",
              *pytest_args]
    return subprocess.run(runner, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
