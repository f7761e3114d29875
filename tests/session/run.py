#!/usr/bin/env python3
"""Run a command inside a real systemd user session (stdlib only: it runs before any virtualenv).

    python3 tests/session/run.py [--timeout SECONDS] [--] COMMAND [ARG...]

- As a user whose own user session is up (a laptop): runs COMMAND directly, but only when this user
  has no babysit of their own (installed unit, config, database, loaded units), which the tests would
  share and break; otherwise it says what it found and how to run privately, and exits 2. Afterwards,
  whatever happens, it stops and deletes everything babysit the tests left.
- As root where no user session runs (containers, CI): builds a private one as SANDBOX.md describes
  (dedicated child cgroups, cgroup + mount + PID namespaces, journald with persistent storage,
  `systemd --user` as an unprivileged test user with its cgroup subtree delegated, the session bus
  socket-activated), runs COMMAND there as that user, and removes every cgroup it made, whatever
  happens. Afterwards it checks that PID 1's cgroups are unchanged and nothing is left behind.
- Otherwise: says what is missing and exits 2.

A private session can stand for one login node of a cluster: `--hostname NAME` gives it a host name and
a machine id of its own (a UTS namespace, and /etc/machine-id bound over in its mount namespace), `--home DIR` makes DIR the test user's home instead of a fresh tmpfs. Two
runners with different names and the same DIR are two hosts sharing a home over NFS, at once.

Either way COMMAND sees BABYSIT_REQUIRE_SESSION=1, so tests that need the session fail instead of
skipping when it is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__:
    from . import cgroups
    from .journald import Journald, serve_control
else:  # run as a plain script, before any virtualenv exists
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import cgroups
    from journald import Journald, serve_control

TEST_USER = "babysit-test"
TEST_UID = 1500
SYSTEMD = "/usr/lib/systemd/systemd"
JOURNALD = "/lib/systemd/systemd-journald"
CHILD_PREFIX = "babysit-session-"
CONTROL_SOCKET = "/run/systemd/babysit-session-control"
SMALL_FS = "/run/user/babysit-test-small"  # a filesystem tests may fill (size SMALL_FS_MIB)
SMALL_FS_MIB = 32
EXIT_USAGE = 2
EXIT_HOST_DIRTY = 3
EXIT_TIMEOUT = 124
STOP_GRACE = 10  # seconds COMMAND has to end after SIGTERM, in direct mode


class SessionError(Exception):
    """The session cannot be built; the message says what is missing."""


def log(message: str) -> None:
    print(f"session: {message}", file=sys.stderr, flush=True)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a condition with a deadline (startup conditions have no signal to await)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SessionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


# --- choosing a mode ----------------------------------------------------------------------------


def own_session_is_up(env: dict[str, str]) -> bool:
    """True when the caller's user manager and session bus are reachable."""
    runtime = env.get("XDG_RUNTIME_DIR")
    if not runtime or not Path(runtime, "systemd", "private").exists():
        return False
    bus = env.get("DBUS_SESSION_BUS_ADDRESS", f"unix:path={runtime}/bus")
    return bus.startswith("unix:path=") and Path(bus.removeprefix("unix:path=").split(",")[0]).exists()


def choose_mode(euid: int, env: dict[str, str]) -> str:
    """'private' (root builds a session), 'direct' (own session is up) or 'missing'."""
    if euid == 0:
        return "private"
    return "direct" if own_session_is_up(env) else "missing"


MISSING_HELP = (
    "no systemd user session is reachable (XDG_RUNTIME_DIR/systemd/private and the session bus). "
    "Log in with a user session (or `loginctl enable-linger $USER`), or run this as root to build "
    "a private one."
)


# --- direct mode: the caller's own session, and their own babysit -------------------------------


def babysit_paths(env: dict[str, str], home: Path) -> list[Path]:
    """Where babysit keeps a user's installation, config and database (babysit/cli/install.py,
    common/config.py, daemon/store.py)."""
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    data = Path(env.get("XDG_DATA_HOME") or home / ".local/share")
    state = Path(env.get("XDG_STATE_HOME") or home / ".local/state")
    return [
        config / "systemd/user/babysitd.service",
        config / "systemd/user/babysit.slice",
        data / "dbus-1/services/org.babysit.service",
        config / "babysit",  # config.toml
        state / "babysit",  # the task database
    ]


def babysit_units(listing: str) -> list[str]:
    """babysit's units (daemon, slice, tasks) in `systemctl --user list-units --all --plain --no-legend` output."""
    units = []
    for line in listing.splitlines():
        fields = line.removeprefix("●").split()
        if len(fields) < 3:
            continue
        name, load, active = fields[:3]
        ours = name in ("babysitd.service", "babysit.slice") or (
            name.startswith("babysit-") and name.endswith(".service"))
        # A name that is merely referenced (not-found and inactive) is no installation.
        if ours and not (load == "not-found" and active == "inactive"):
            units.append(name)
    return units


def refusal(found: list[str], runner: str, args: list[str]) -> str:
    """Why direct mode will not run, and the private run that would."""
    return (
        "this user has a babysit of their own, which the tests would share, and then stop and delete:\n"
        + "".join(f"  {thing}\n" for thing in found)
        + "Run the tests in a private session instead, as root (COMMAND then runs as the test user "
        f"{TEST_USER}, who must be able to read this tree):\n  sudo python3 {shlex.join([runner, *args])}"
    )


def list_babysit_units() -> list[str]:
    """babysit's units loaded in the caller's user manager."""
    listing = subprocess.run(["systemctl", "--user", "list-units", "--all", "--plain", "--no-legend", "--full",
                              "babysit*"], capture_output=True, text=True, timeout=60)
    if listing.returncode != 0:
        raise SessionError(f"systemctl --user list-units failed: {listing.stderr.strip()}")
    return babysit_units(listing.stdout)


def present(paths: list[Path]) -> list[Path]:
    """The paths that exist (a dangling symlink too)."""
    return [path for path in paths if path.exists() or path.is_symlink()]


def missing_parents(paths: list[Path]) -> list[Path]:
    """Directories on the way to `paths` that do not exist yet, deepest first."""
    missing: set[Path] = set()
    for path in paths:
        for parent in path.parents:
            if parent.exists():
                break
            missing.add(parent)
    return sorted(missing, key=lambda p: (-len(p.parts), str(p)))


def run_direct(command: list[str], timeout: float | None, args: list[str]) -> int:
    """Run COMMAND in the caller's own session if they have no babysit; remove what it left, whatever happens."""
    paths = babysit_paths(dict(os.environ), Path.home())
    found = [str(p) for p in present(paths)] + [f"loaded unit {u}" for u in list_babysit_units()]
    if found:
        raise SessionError(refusal(found, os.path.relpath(__file__), args))
    new_dirs = missing_parents(paths)
    try:
        return run_command(command, {**os.environ, "BABYSIT_REQUIRE_SESSION": "1"}, timeout)
    finally:
        # None of babysit's paths or units existed before COMMAND ran: whatever is there now, the tests made.
        if not remove_babysit(paths, new_dirs):
            sys.exit(EXIT_HOST_DIRTY)


def run_command(command: list[str], env: dict[str, str], timeout: float | None) -> int:
    """COMMAND's exit status; SIGTERM and SIGHUP are passed on to it, and at `timeout` it is ended."""
    try:
        # A runner started in the background by a non-interactive shell inherits SIGINT ignored, and
        # COMMAND would inherit that: Ctrl-C must end it as it would in a terminal.
        proc = subprocess.Popen(command, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    except OSError as e:
        raise SessionError(f"cannot run {command[0]}: {e}") from e

    def on_signal(signum: int, _frame: object) -> None:
        # A terminal's Ctrl-C reaches the whole foreground process group, COMMAND included: only the
        # others need passing on. The handlers stay for the cleanup, which no signal may cut short.
        log(f"{signal.Signals(signum).name}: ending {command[0]}, then cleaning up")
        if signum != signal.SIGINT and proc.poll() is None:
            proc.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        status = proc.wait(timeout=timeout)
        return 128 - status if status < 0 else status  # killed by signal N: 128+N, as a shell says
    except subprocess.TimeoutExpired:
        log(f"timed out after {timeout:.0f}s: ending {command[0]}")
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return EXIT_TIMEOUT


def remove_babysit(paths: list[Path], new_dirs: list[Path]) -> bool:
    """Stop babysit's units and delete its files, as before the tests; True when none is left."""
    units = list_babysit_units()
    if units:
        subprocess.run(["systemctl", "--user", "stop", *units], timeout=120)
        # a unit that failed stays loaded until its failure is reset; one already gone makes this complain
        subprocess.run(["systemctl", "--user", "reset-failed", *units], capture_output=True, timeout=60)
    removed = present(paths)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    for directory in new_dirs:
        try:
            directory.rmdir()
        except OSError:
            pass  # gone already, or holds something that is not babysit's
    subprocess.run(["systemctl", "--user", "daemon-reload"], timeout=120)  # unloads the units whose files went
    left = [str(p) for p in present(paths)] + [f"unit {u}" for u in list_babysit_units()]
    if left:
        log(f"NOT CLEAN: babysit left behind: {', '.join(left)}")
        return False
    done = []
    if units:
        done.append(f"stopped {', '.join(units)}")
    if removed:
        done.append(f"removed {', '.join(map(str, removed))}")
    log(f"cleaned up babysit after the tests: {'; '.join(done) or 'nothing to clean'}")
    return True


# --- outside the namespaces (root on the host) --------------------------------------------------


def ensure_test_user(name: str, uid: int) -> pwd.struct_passwd:
    """The unprivileged user that owns the private session, created on first use."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    try:
        taken = pwd.getpwuid(uid)
        raise SessionError(f"uid {uid} already belongs to {taken.pw_name}; pass --user/--uid")
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--uid", str(uid), "--user-group", "--no-create-home",
         "--home-dir", f"/home/{name}", "--shell", "/bin/bash", name],
        check=True,
    )
    return pwd.getpwnam(name)


def as_user(user: pwd.struct_passwd, argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", *argv]


def check_readable(user: pwd.struct_passwd, cwd: str, command: list[str]) -> None:
    """The test user must reach the working tree and the command (root's home is closed to it)."""
    probe = ["test", "-r", cwd, "-a", "-x", cwd]
    if "/" in command[0]:
        probe += ["-a", "-x", command[0]]
    if subprocess.run(as_user(user, probe), cwd=cwd).returncode != 0:
        raise SessionError(
            f"user {user.pw_name} cannot read {cwd} or run {command[0]}: put the tree and its "
            "virtualenv where other users can read them (not under root's home)"
        )


def check_home(user: pwd.struct_passwd, home: str) -> None:
    """A home given with --home is a directory the test user owns, as a real home is."""
    found = os.stat(home) if os.path.isdir(home) else None
    if found is None or found.st_uid != user.pw_uid:
        raise SessionError(f"--home {home} must be a directory owned by {user.pw_name} (uid {user.pw_uid})")


def remove_stale_children() -> None:
    """Remove empty cgroups of runners that died without cleaning up (power loss, SIGKILL)."""
    for h in cgroups.current_hierarchies():
        for child in h.dir.glob(f"{CHILD_PREFIX}*"):
            owner = child.name.removeprefix(CHILD_PREFIX)
            # A live owner may still be using it; a non-empty one is not ours to judge.
            if not owner.isdigit() or Path(f"/proc/{owner}").exists() or procs_left(child):
                continue
            if not cgroups.remove_tree(child):
                log(f"removed {child} left by an ended runner")


def make_children(name: str) -> list[tuple[cgroups.Hierarchy, Path]]:
    """One fresh child cgroup in every hierarchy, under this process's own cgroup."""
    made = []
    for h in cgroups.current_hierarchies():
        made.append((h, cgroups.make_child(h.dir, name, h.is_cpuset)))
    return made


def enter_children(children: list[tuple[cgroups.Hierarchy, Path]]) -> Callable[[], None]:
    """preexec_fn: move the child into its dedicated cgroups, and refuse to go on otherwise."""

    def enter() -> None:
        for _h, child in children:
            cgroups.join(child)
        where = cgroups.parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
        for h, child in children:
            expected = "/" + str(child.relative_to(h.mountpoint))
            if where.get(h.key) != expected:
                raise SessionError(f"not in the dedicated cgroup {expected} of {h.key or 'unified'}")

    return enter


def procs_left(cgroup: Path) -> list[str]:
    """Processes still in a cgroup tree."""
    pids: list[str] = []
    for dirpath, _dirs, _files in os.walk(cgroup):
        procs = Path(dirpath, "cgroup.procs")
        if procs.exists():
            pids += procs.read_text().split()
    return pids


def run_private(command: list[str], user_name: str, uid: int, timeout: float | None, hostname: str | None = None,
                home: str | None = None) -> int:
    """Build the private session around `command`; always clean up and check the host after."""
    for tool in ("unshare", "setpriv", SYSTEMD, JOURNALD, "journalctl", "busctl"):
        if not shutil.which(tool):
            raise SessionError(f"{tool} is missing (install the systemd, dbus-user-session, util-linux packages)")
    user = ensure_test_user(user_name, uid)
    cwd = os.getcwd()
    check_readable(user, cwd, command)
    if home is not None:
        check_home(user, home)
    pid1_before = Path("/proc/1/cgroup").read_text()
    remove_stale_children()
    name = f"{CHILD_PREFIX}{os.getpid()}"
    children = make_children(name)
    try:
        config = {
            "user": user.pw_name,
            "cwd": cwd,
            "command": command,
            "host_cgroupns": os.readlink("/proc/self/ns/cgroup"),
            "hierarchies": [[h.key, str(h.mountpoint)] for h, _ in children],
            "hostname": hostname,
            "home": home and os.path.abspath(home),
        }
        namespaces = ["--cgroup", "--mount", "--pid", *(["--uts"] if hostname else [])]
        inner = ["unshare", *namespaces, "--fork", "--kill-child", "--propagation", "private",
                 sys.executable, __file__, "--inner", json.dumps(config)]
        try:
            proc = subprocess.Popen(inner, preexec_fn=enter_children(children))
        except subprocess.SubprocessError as e:  # raised in place of the preexec_fn's refusal
            raise SessionError(f"could not enter the dedicated cgroups: {e}") from e
        return supervise(proc, timeout)
    finally:
        host_clean = cleanup(children, pid1_before)
        if not host_clean:
            sys.exit(EXIT_HOST_DIRTY)


def supervise(proc: subprocess.Popen, timeout: float | None) -> int:
    """Wait for the session; on Ctrl-C, SIGTERM, SIGHUP or timeout end it and everything in it."""

    def end_session() -> None:
        # SIGKILL the namespace's init, not unshare: unshare then reaps it, so nothing is orphaned
        # to the host's PID 1, and the kernel kills every other process of the namespace with it.
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        inits = children.read_text().split() if children.exists() else []
        for pid in inits or [str(proc.pid)]:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass  # it ended on its own meanwhile

    def on_signal(signum: int, _frame: object) -> None:
        log(f"{signal.Signals(signum).name}: ending the session")
        end_session()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"timed out after {timeout:.0f}s: ending the session")
        end_session()
        proc.wait()
        return EXIT_TIMEOUT


def cleanup(children: list[tuple[cgroups.Hierarchy, Path]], pid1_before: str) -> bool:
    """Remove the runner's cgroups and check the host; True when nothing was left behind."""
    problems = []
    for h, child in children:
        try:
            wait_until(lambda: not procs_left(child), 10, f"the processes in {child} to end")
        except SessionError as e:
            problems.append(str(e))
        problems += [f"cgroup left behind: {p}" for p in cgroups.remove_tree(child)]
    pid1_after = Path("/proc/1/cgroup").read_text()
    if pid1_after != pid1_before or "init.scope" in pid1_after:
        problems.append(f"PID 1's cgroups changed:\n{pid1_before}->\n{pid1_after}")
    for problem in problems:
        log(f"HOST NOT CLEAN: {problem}")
    if not problems:
        log(f"host clean: PID 1's cgroups unchanged, {len(children)} runner cgroups removed")
    return not problems


# --- inside the namespaces (PID 1 of the new PID namespace, still root) ------------------------


def mount(fstype: str, target: str | Path, options: str | None = None, source: str | None = None) -> None:
    Path(target).mkdir(parents=True, exist_ok=True)
    argv = ["mount", "-t", fstype] + (["-o", options] if options else []) + [source or fstype, str(target)]
    subprocess.run(argv, check=True)


def mount_cgroups(hierarchies: list[tuple[str, str]]) -> list[Path]:
    """Mount every hierarchy afresh: inside the cgroup namespace our child cgroup is the root."""
    roots = []
    if all(mp != "/sys/fs/cgroup" for _key, mp in hierarchies):
        mount("tmpfs", "/sys/fs/cgroup", "mode=755")
    for key, mountpoint in hierarchies:
        if key == "":
            mount("cgroup2", mountpoint)
        else:
            mount("cgroup", mountpoint, cgroups.Hierarchy(key, Path(mountpoint), "/").mount_options, "cgroup")
        roots.append(Path(mountpoint))
    return roots


def delegate(roots: list[Path], relative: str, owner: pwd.struct_passwd | None = None) -> list[Path]:
    """Create `relative` in every hierarchy; with an owner, hand the subtree to that user."""
    made = []
    for root in roots:
        cgroup = root
        for part in relative.split("/"):
            is_cpuset = (root / "cpuset.cpus").exists()
            cgroup = cgroups.make_child(cgroup, part, is_cpuset)
        if owner:
            for dirpath, _dirs, files in os.walk(cgroup):
                for entry in [dirpath] + [os.path.join(dirpath, f) for f in files]:
                    os.chown(entry, owner.pw_uid, owner.pw_gid)
        made.append(cgroup)
    return made


def enable_v2_controllers(roots: list[Path], relative: str) -> None:
    """On a cgroup v2 hierarchy, pass the available controllers down to `relative`."""
    for root in roots:
        if not (root / "cgroup.subtree_control").exists():
            continue
        available = (root / "cgroup.controllers").read_text().split()
        if not available:
            continue
        cgroup = root
        for part in relative.split("/")[:-1]:
            (cgroup / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in available))
            cgroup = cgroup / part


def start_in(cgroup_dirs: list[Path], argv: list[str], **kwargs: object) -> subprocess.Popen:
    """Start a process that first joins the given cgroups."""

    def enter() -> None:
        for cgroup in cgroup_dirs:
            cgroups.join(cgroup)

    return subprocess.Popen(argv, preexec_fn=enter, **kwargs)  # type: ignore[call-overload]


def user_env(user: pwd.struct_passwd, runtime: str) -> dict[str, str]:
    """The caller's environment, with the test user's identity and session."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "DBUS_", "SUDO_")) and k not in ("MAIL", "PYENV_VERSION")}
    env.update(
        HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name, SHELL="/bin/bash",
        XDG_RUNTIME_DIR=runtime, DBUS_SESSION_BUS_ADDRESS=f"unix:path={runtime}/bus",
        BABYSIT_REQUIRE_SESSION="1", PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def run_inner(config: dict) -> int:
    """Build the session (we are PID 1 of fresh namespaces), run the command, return its status."""
    if os.getpid() != 1 or os.readlink("/proc/self/ns/cgroup") == config["host_cgroupns"]:
        raise SessionError("refusing to start systemd --user outside the runner's own namespaces")
    user = pwd.getpwnam(config["user"])
    roots = mount_cgroups([tuple(h) for h in config["hierarchies"]])
    mount("proc", "/proc")
    for private in ("/run/systemd", "/run/user", "/run/log", "/var/log/journal"):
        mount("tmpfs", private, "mode=755")
    Path("/run/systemd/system").mkdir()  # how systemd --user learns the host "booted with systemd"
    if config["hostname"]:  # another host: its own name and its own machine-id(5), as babysit keys its state by
        socket.sethostname(config["hostname"])
        machine_id = Path("/run/systemd/machine-id")  # on the private tmpfs above
        machine_id.write_text(hashlib.md5(config["hostname"].encode()).hexdigest() + "\n")
        for shown in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
            if Path(shown).exists():
                subprocess.run(["mount", "--bind", str(machine_id), shown], check=True)
    if config["home"]:  # shared with whatever else mounts it: another runner, as another host
        Path(user.pw_dir).mkdir(exist_ok=True)
        subprocess.run(["mount", "--bind", config["home"], user.pw_dir], check=True)
    else:
        mount("tmpfs", user.pw_dir, "mode=700")
        os.chown(user.pw_dir, user.pw_uid, user.pw_gid)

    journald_cgroup = delegate(roots, "system.slice/systemd-journald.service")
    user_service = f"user.slice/user-{user.pw_uid}.slice/user@{user.pw_uid}.service"
    enable_v2_controllers(roots, user_service)
    manager_cgroup = delegate(roots, user_service, owner=user)

    # as babysit's README asks of a host: journald keeps every line of a chatty task (systemd honours
    # per-unit LogRateLimit* for system units only)
    Path("/run/systemd/journald.conf.d").mkdir()
    Path("/run/systemd/journald.conf.d/babysit.conf").write_text("[Journal]\nRateLimitIntervalSec=0\n")
    journald = Journald(JOURNALD, lambda argv, **kwargs: start_in(journald_cgroup, argv, **kwargs))
    journald.start()
    subprocess.run(["journalctl", "--flush"], check=True)  # persistent storage splits user-U.journal

    runtime = f"/run/user/{user.pw_uid}"
    Path(runtime).mkdir(mode=0o700)
    os.chown(runtime, user.pw_uid, user.pw_gid)
    env = user_env(user, runtime)
    env["BABYSIT_SESSION_CONTROL"] = CONTROL_SOCKET  # lets tests restart journald, as an administrator would
    # a small filesystem of the user's, for tests that fill a disk (in /run/user: a tmpfs of the runner's own)
    Path(SMALL_FS).mkdir()
    mount("tmpfs", SMALL_FS, f"size={SMALL_FS_MIB}m,mode=700")
    os.chown(SMALL_FS, user.pw_uid, user.pw_gid)
    env["BABYSIT_TEST_SMALL_FS"] = SMALL_FS
    serve_control(CONTROL_SOCKET, user.pw_uid, user.pw_gid, journald)
    manager = start_in(manager_cgroup, as_user(user, [SYSTEMD, "--user"]), env=env, cwd="/")
    wait_until(Path(runtime, "bus").exists, 20, "the session bus socket")
    systemd_on_bus = as_user(user, ["busctl", "--user", "status", "org.freedesktop.systemd1"])
    wait_until(
        lambda: subprocess.run(systemd_on_bus, env=env, capture_output=True).returncode == 0,
        20, "systemd on the session bus",
    )
    log(f"running {' '.join(config['command'])} as {user.pw_name} (uid {user.pw_uid})")
    status = subprocess.run(as_user(user, config["command"]), env=env, cwd=config["cwd"]).returncode
    manager.terminate()  # let the user manager stop its units; the namespace ends the rest
    try:
        manager.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    return status


# --- entry point -------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if argv[:1] == ["--inner"]:
        try:
            return run_inner(json.loads(argv[1]))
        except SessionError as e:
            log(f"error: {e}")
            return EXIT_USAGE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, help="end the session after this many seconds")
    parser.add_argument("--user", default=TEST_USER, help="test user of a private session")
    parser.add_argument("--uid", type=int, default=TEST_UID, help="uid for the test user if it is created")
    parser.add_argument("--hostname", help="a private session's host name (default: the host's)")
    parser.add_argument("--home", help="a private session's home directory, owned by the test user "
                                       "(default: a fresh tmpfs)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    mode = choose_mode(os.geteuid(), dict(os.environ))
    try:
        if mode == "direct" and (args.hostname or args.home):
            raise SessionError("--hostname and --home make a private session: run this as root")
        if mode == "direct":
            return run_direct(command, args.timeout, argv)
        if mode == "missing":
            raise SessionError(MISSING_HELP)
        return run_private(command, args.user, args.uid, args.timeout, args.hostname, args.home)
    except SessionError as e:
        log(f"error: {e}")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
