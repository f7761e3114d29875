#!/usr/bin/env python3
"""Run a command next to a real private single-node Slurm cluster (stdlib only: it runs before any virtualenv).

    python3 tests/slurm/cluster.py [--timeout SECONDS] [--dir DIR] [--no-cgroups] [--] COMMAND [ARG...]

As root: installs Slurm, MUNGE, slurmdbd and MariaDB if missing, then builds a one-node cluster under
one private directory (config, state, spool, logs, MUNGE key and socket, the database's datadir):
munged (as the munge user), mariadbd on 127.0.0.1, slurmdbd,
slurmctld and slurmd, each started here and known by its PID. It waits until the node is idle and a
probe job (job 1, named cluster-probe, run as root) has completed, runs COMMAND with SLURM_CONF
pointing at the cluster (COMMAND's exit status becomes ours), then cancels the jobs left, stops every
daemon by PID in reverse order, removes slurmd's cgroups and the directory, whatever happens (also on
SIGTERM, SIGHUP, Ctrl-C and --timeout). Jobs are confined and measured with cgroup v1 where the host
mounts it, and otherwise (or with --no-cgroups) tracked through /proc.

Any user may submit jobs: the socket, the config and the directory are readable by all, and a job runs
as its submitter provided that user exists on the host when it is submitted. Jobs run in the host's
namespaces: a path that only exists inside tests/session/run.py's private mounts (the test user's
home, /run/user/UID) is invisible to them.

Hold /tmp/babysit-session.lock around it (`flock /tmp/babysit-session.lock python3 ...`); it does not
take the lock itself, so it can run inside another holder of that lock.

COMMAND also sees BABYSIT_SLURM_CONTROL: a socket in the cluster's directory through which any user may
ask, one line per connection, for what an administrator would do: `stop-controller` (slurmctld ends, as
in an outage; jobs go on) and `start-controller` (slurmctld starts again from its saved state, and the
answer comes once it answers). The reply is `ok` or `error: ...`.

Another runner can start the cluster around its own work:

    with cluster() as c:
        subprocess.run(["sbatch", ...], env=c.env())
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ["slurm-wlm", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
DAEMONS = ("munged", "mariadbd", "mysqld", "slurmdbd", "slurmctld", "slurmd", "slurmstepd")
CLUSTER_NAME = "babysit"
PARTITION = "debug"
PROBE_JOB = "cluster-probe"  # job 1 of every cluster, run by root before COMMAND starts
CGROUP_ROOT = Path("/sys/fs/cgroup")
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
STOP_GRACE = 10  # seconds COMMAND has to end after SIGTERM at --timeout
START_TIMEOUT = 60  # seconds for each daemon to become ready (a cold MariaDB on a busy 2-core machine)


class ClusterError(Exception):
    """The cluster cannot be built or cleaned; the message says why."""


class Interrupted(Exception):
    """A signal arrived before COMMAND started: stop building, clean up."""


def log(message: str) -> None:
    print(f"slurm-cluster: {message}", file=sys.stderr, flush=True)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               alive: Callable[[], None] = lambda: None) -> None:
    """Poll a condition with a deadline (readiness has no signal to await); `alive` raises if a daemon died."""
    deadline = time.monotonic() + timeout
    while not predicate():
        alive()
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


# --- the host: packages, users, other daemons ---------------------------------------------------


def ensure_packages() -> None:
    """Install what is missing, as .ci/run does; Debian's policy-rc.d keeps postinsts from starting services."""
    need = []
    for package in PACKAGES:
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        if "ok installed" not in status.stdout:
            need.append(package)
    if not need:
        return
    log(f"installing {' '.join(need)}")
    before = running_daemons()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    # A postinst that started a service made it the package's, not ours: say so, leave it alone.
    for pid, name in running_daemons().items():
        if pid not in before:
            log(f"WARNING: installing the packages started {name} (pid {pid}); it is not stopped here")


def running_daemons() -> dict[int, str]:
    """The Slurm, MUNGE and MariaDB processes running on the host, by PID."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                name = (proc / "comm").read_text().strip()
            except OSError:
                continue  # ended meanwhile
            if name in DAEMONS:
                found[int(proc.name)] = name
    return found


def short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the daemons bind it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_traversable(directory: Path) -> None:
    """Jobs and clients run as other users: every directory up to the cluster's must let them through."""
    for d in [directory, *directory.parents]:
        if d.exists() and not d.stat().st_mode & 0o001:
            raise ClusterError(f"{d} is not traversable by other users: put the cluster elsewhere (--dir)")


def node_hardware() -> dict[str, str]:
    """`slurmd -C`'s description of this machine, as slurm.conf keys."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "SLURM_CONF"}).stdout
    fields = dict(item.split("=", 1) for item in out.splitlines()[0].split())
    fields.pop("NodeName", None)
    return fields


def real_memory_mib(detected: int) -> int:
    """RealMemory to configure: slurmd drains a node that has less than configured, and the host needs some."""
    return max(detected - max(512, detected // 10), detected // 2)


# --- cgroups ------------------------------------------------------------------------------------


def slurm_cgroups(host: str) -> list[Path]:
    """slurmd's cgroup trees (`slurm_<host>`) in every hierarchy, wherever slurmd placed them."""
    found = []
    if not CGROUP_ROOT.is_dir():
        return found
    for hierarchy in CGROUP_ROOT.iterdir():
        for dirpath, dirs, _files in os.walk(hierarchy):
            if os.path.basename(dirpath) == f"slurm_{host}":
                found.append(Path(dirpath))
                dirs.clear()
            elif len(Path(dirpath).relative_to(hierarchy).parts) >= 3:
                dirs.clear()  # slurmd puts it at the root, or under its own cgroup at most
    return found


def cgroup_pids(tree: Path) -> list[int]:
    pids = []
    for dirpath, _dirs, files in os.walk(tree):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                pids += [int(p) for p in Path(dirpath, "cgroup.procs").read_text().split()]
    return pids


def remove_cgroup_tree(tree: Path) -> list[Path]:
    """rmdir a cgroup and its descendants bottom-up; return the ones that could not go."""
    left = []
    for dirpath, _dirs, _files in os.walk(tree, topdown=False):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
        except OSError:
            left.append(Path(dirpath))
    return left


def remove_stale_cgroups(host: str) -> None:
    """An earlier slurmd that died uncleaned leaves empty cgroups; a non-empty one belongs to a live cluster."""
    for tree in slurm_cgroups(host):
        if cgroup_pids(tree):
            raise ClusterError(f"{tree} holds processes: another slurmd's jobs are running on this host")
        remove_cgroup_tree(tree)
        log(f"removed stale {tree}")


# --- configuration ------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A running private cluster: its directory, config file and daemons."""

    dir: Path
    host: str = field(default_factory=short_hostname)
    ports: dict[str, int] = field(default_factory=dict)
    daemons: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    cgroups: bool = True  # jobs confined and measured by cgroup v1; else polled through /proc

    @property
    def conf(self) -> Path:
        return self.dir / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.dir / "munge-socket" / "munge.socket"

    @property
    def partition(self) -> str:
        return PARTITION

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) with SLURM_CONF pointing at this cluster."""
        return {**(os.environ if base is None else base), "SLURM_CONF": str(self.conf)}

    def run(self, argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster, output captured."""
        done = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        return done


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)


def slurm_conf(c: Cluster, hardware: dict[str, str]) -> str:
    d = c.dir
    memory = real_memory_mib(int(hardware.pop("RealMemory")))
    node = " ".join(f"{k}={v}" for k, v in hardware.items())
    tracking = CGROUP_TRACKING if c.cgroups else PROC_TRACKING
    return f"""\
# A private one-node cluster of tests/slurm/cluster.py.
ClusterName={CLUSTER_NAME}
SlurmctldHost={c.host}(127.0.0.1)
SlurmctldPort={c.ports['slurmctld']}
SlurmdPort={c.ports['slurmd']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={c.munge_socket}
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
{tracking}JobAcctGatherFrequency=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={c.ports['slurmdbd']}
# slurmctld's connection to slurmdbd ignores AuthInfo: without this it looks for /run/munge/munge.socket.2
AccountingStoragePass={c.munge_socket}
KillWait=5
MinJobAge=300
InactiveLimit=0
PropagateResourceLimits=NONE
ReturnToService=2
MailProg=/bin/true
GresTypes=gpu
NodeName={c.host} NodeAddr=127.0.0.1 {node} RealMemory={memory} Gres=gpu:{GPUS} State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


CGROUP_TRACKING = """\
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
JobAcctGatherType=jobacct_gather/cgroup
"""
# Without cgroup v1: memory is enforced by polling, up to a second late, and a job over its
# limit ends FAILED rather than OUT_OF_MEMORY.
PROC_TRACKING = """\
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill
"""


def cgroup_v1_available() -> bool:
    """The v1 controllers that slurmd's cgroup plugins use are mounted where it looks for them."""
    return all((CGROUP_ROOT / c / "cgroup.procs").exists() for c in ("memory", "freezer", "cpuset", "cpuacct"))


def cgroup_conf() -> str:
    return "CgroupPlugin=cgroup/v1\nCgroupAutomount=no\nConstrainCores=yes\nConstrainRAMSpace=yes\n"


GPUS = 2  # the node's GPUs: device nodes with NVIDIA's major number, made for the cluster (no driver needed)


def gres_conf(c: Cluster) -> str:
    """The node's GPUs as Slurm's gres: two device files of its own, so jobs get CUDA_VISIBLE_DEVICES by index."""
    (c.dir / "dev").mkdir(mode=0o755)
    for minor in range(GPUS):
        os.mknod(c.dir / "dev" / f"nvidia{minor}", stat.S_IFCHR | 0o666, os.makedev(195, minor))
    return f"Name=gpu File={c.dir}/dev/nvidia[0-{GPUS - 1}]\n"


def slurmdbd_conf(c: Cluster) -> str:
    d = c.dir
    return f"""\
AuthType=auth/munge
AuthInfo=socket={c.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={c.ports['slurmdbd']}
SlurmUser=root
PidFile={d}/run/slurmdbd.pid
LogFile={d}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={c.ports['mariadb']}
StorageUser=root
StorageLoc=slurm_acct_db
"""


def prepare(c: Cluster) -> None:
    """Create the directory layout, the MUNGE key and the config files."""
    munge = pwd.getpwnam("munge")
    mysql = pwd.getpwnam("mysql")
    d = c.dir
    for sub in ("etc", "state", "spool", "run", "log"):
        (d / sub).mkdir(mode=0o755)
    # munged refuses a key, log or socket directory that others can write; others must reach the socket.
    for sub, mode in (("munge", 0o711), ("munge-socket", 0o755)):
        (d / sub).mkdir()
        (d / sub).chmod(mode)
        os.chown(d / sub, munge.pw_uid, munge.pw_gid)
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    os.chown(key, munge.pw_uid, munge.pw_gid)
    (d / "mysql").mkdir(mode=0o700)
    os.chown(d / "mysql", mysql.pw_uid, mysql.pw_gid)

    c.ports = {name: free_port() for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb")}
    write(c.conf, slurm_conf(c, node_hardware()))
    if c.cgroups:
        write(d / "etc" / "cgroup.conf", cgroup_conf())
    write(d / "etc" / "gres.conf", gres_conf(c))
    # slurmdbd has no -f: it reads slurmdbd.conf next to $SLURM_CONF, and only if no one else can read it
    write(d / "etc" / "slurmdbd.conf", slurmdbd_conf(c), 0o600)


# --- daemons ------------------------------------------------------------------------------------


def start(c: Cluster, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start a daemon in the foreground of its own session (a terminal's Ctrl-C is ours to pass on)."""
    out = open(c.dir / "log" / f"{name}.out", "ab")
    with out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(env or c.env()), cwd=c.dir, start_new_session=True)
    c.daemons.append((name, proc))
    return proc


def check_alive(c: Cluster) -> None:
    for name, proc in c.daemons:
        if proc.poll() is not None:
            raise ClusterError(f"{name} (pid {proc.pid}) exited with status {proc.returncode}")


def start_munged(c: Cluster) -> None:
    munge_dir = c.dir / "munge"
    start(c, "munged", [
        "setpriv", "--reuid=munge", "--regid=munge", "--init-groups",
        "munged", "--foreground", f"--socket={c.munge_socket}", f"--key-file={munge_dir}/munge.key",
        f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
        f"--seed-file={munge_dir}/munged.seed",
    ])
    wait_until(c.munge_socket.exists, START_TIMEOUT, "munged's socket", lambda: check_alive(c))
    c.munge_socket.parent.chmod(0o755)


def start_mariadb(c: Cluster) -> None:
    datadir = c.dir / "mysql"
    common = ["--no-defaults", "--user=mysql", f"--datadir={datadir}"]
    # root@127.0.0.1 without a password (not unix_socket auth): slurmdbd connects over TCP
    with open(c.dir / "log" / "mariadb-install-db.out", "wb") as out:
        subprocess.run(["mariadb-install-db", *common, "--auth-root-authentication-method=normal",
                        "--skip-test-db", "--skip-name-resolve"],
                       stdout=out, stderr=subprocess.STDOUT, check=True, cwd=c.dir)
    start(c, "mariadbd", [
        "mariadbd", *common, "--bind-address=127.0.0.1", f"--port={c.ports['mariadb']}",
        f"--socket={datadir}/mysqld.sock", f"--pid-file={datadir}/mysqld.pid",
        f"--log-error={c.dir}/log/mariadbd.log", "--skip-name-resolve", "--skip-log-bin",
        "--innodb-buffer-pool-size=64M",
    ])

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", c.ports["mariadb"])) == 0

    wait_until(listening, START_TIMEOUT, "mariadbd to listen", lambda: check_alive(c))


def start_slurm(c: Cluster) -> None:
    start(c, "slurmdbd", ["slurmdbd", "-D"])

    # slurmdbd creates its tables before it listens: retry until it answers
    def registered() -> bool:
        return c.run(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME], check=False).returncode == 0

    wait_until(registered, START_TIMEOUT, "slurmdbd to register the cluster", lambda: check_alive(c))
    start(c, "slurmctld", ["slurmctld", "-D"])
    start(c, "slurmd", ["slurmd", "-D", "-N", c.host])

    def idle() -> bool:
        return c.run(["sinfo", "-h", "-N", "-o", "%t"], check=False).stdout.split() == ["idle"]

    wait_until(idle, START_TIMEOUT, "the node to be idle in sinfo", lambda: check_alive(c))

    # slurmctld schedules nothing for its first ~3 s: a probe job takes that wait (and shows that jobs run)
    # here rather than in COMMAND's first job.
    probe = c.run(["sbatch", "--parsable", f"--job-name={PROBE_JOB}", "--mem=1M", "--output=/dev/null",
                   "--wrap=true"]).stdout.strip()
    state = ""

    def probe_done() -> bool:
        nonlocal state
        state = c.run(["squeue", "-h", "-t", "all", "-j", probe, "-o", "%T"], check=False).stdout.strip()
        return state not in ("", "PENDING", "CONFIGURING", "RUNNING", "COMPLETING")

    wait_until(probe_done, START_TIMEOUT, "a probe job to run", lambda: check_alive(c))
    if state != "COMPLETED":
        raise ClusterError(f"the probe job {probe} ended {state}, not COMPLETED")


def controller_answers(c: Cluster) -> bool:
    return c.run(["scontrol", "ping"], check=False, timeout=20).stdout.count("is UP") > 0


def stop_controller(c: Cluster) -> None:
    """slurmctld ends (an outage): clients get no answer; slurmd and the jobs go on."""
    for name, proc in list(c.daemons):
        if name == "slurmctld":
            stop_process(name, proc, 15)
            c.daemons.remove((name, proc))  # ended on purpose: not a daemon that died


def start_controller(c: Cluster) -> None:
    """slurmctld starts again from its saved state; returns once it answers."""
    if not any(name == "slurmctld" and proc.poll() is None for name, proc in c.daemons):
        start(c, "slurmctld", ["slurmctld", "-D"])
    wait_until(lambda: controller_answers(c), START_TIMEOUT, "slurmctld to answer", lambda: check_alive(c))


def serve_control(c: Cluster) -> Path:
    """The socket of BABYSIT_SLURM_CONTROL (see the module's docstring), served by a thread."""
    path = c.dir / "control.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    path.chmod(0o666)  # the tests run as an unprivileged user
    server.listen()
    actions = {"stop-controller": stop_controller, "start-controller": start_controller}

    def loop() -> None:
        while True:
            connection, _ = server.accept()
            with connection, connection.makefile("rw") as stream:
                request = stream.readline().strip()
                try:
                    if request not in actions:
                        raise ValueError(f"unknown request {request!r}")
                    log(request)
                    actions[request](c)
                    stream.write("ok\n")
                except Exception as e:  # the answer carries it to the test that asked
                    stream.write(f"error: {e}\n")

    threading.Thread(target=loop, daemon=True).start()
    return path


def end_jobs(c: Cluster) -> None:
    """Cancel every job and wait until the controller has cleaned them up (slurmstepd outlives slurmd)."""
    if not any(name == "slurmctld" and proc.poll() is None for name, proc in c.daemons):
        return
    listed = c.run(["squeue", "-h", "-o", "%i"], check=False, timeout=20)
    ids = listed.stdout.split()
    if not ids:
        return
    log(f"cancelling jobs left running: {' '.join(ids)}")
    c.run(["scancel", *ids], check=False, timeout=20)
    with contextlib.suppress(ClusterError):
        wait_until(lambda: not c.run(["squeue", "-h", "-o", "%i"], check=False, timeout=20).stdout.split(),
                   30, "the cancelled jobs to end")


def stop_process(name: str, proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"{name} (pid {proc.pid}) ignored SIGTERM for {grace:.0f}s: killing it")
            proc.kill()
            proc.wait()
    elif proc.returncode not in (0, -signal.SIGTERM):
        log(f"{name} (pid {proc.pid}) had exited with status {proc.returncode}")


def stop(c: Cluster) -> list[str]:
    """Stop everything started here, in reverse order; return what could not be cleaned."""
    problems = []
    try:
        end_jobs(c)
    except (OSError, subprocess.SubprocessError) as e:
        problems.append(f"could not cancel the jobs: {e}")
    for name, proc in reversed(c.daemons):
        stop_process(name, proc, 60 if name == "mariadbd" else 15)
    # Job processes (slurmstepd and what it ran) live in slurmd's cgroups; slurmd started them for us.
    for tree in slurm_cgroups(c.host):
        pids = cgroup_pids(tree)
        if pids:
            log(f"killing processes left in {tree}: {' '.join(map(str, pids))}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ClusterError):
                wait_until(lambda: not cgroup_pids(tree), 10, f"the processes in {tree} to end")
        left = remove_cgroup_tree(tree)
        problems += [f"cgroup left behind: {p}" for p in left]
        if not left:
            log(f"removed {tree}")
    return problems


def log_tails(c: Cluster, lines: int = 15) -> None:
    """The end of every daemon's log: why start-up failed."""
    for path in sorted([*(c.dir / "log").glob("*"), c.dir / "munge" / "munged.log"]):
        if path.is_file() and path.stat().st_size:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            log(f"--- {path.name}\n" + "\n".join(tail))


@contextlib.contextmanager
def cluster(directory: str | os.PathLike | None = None, use_cgroups: bool | None = None,
            on_stop: Callable[[], None] = lambda: None) -> Iterator[Cluster]:
    """A running private cluster under `directory` (new or empty; default a new one in /var/tmp), removed after.

    `use_cgroups`: confine and measure jobs with cgroup v1 (default: when this host has it mounted).
    `on_stop` is called when the clean-up begins (the command line's signal handlers stop interrupting then).
    """
    if os.geteuid() != 0:
        raise ClusterError("the private cluster needs root (its daemons run as root, munge and mysql)")
    for tool in ("setpriv", "munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sinfo"):
        if not shutil.which(tool):
            raise ClusterError(f"{tool} is missing (packages: {' '.join(PACKAGES)})")
    host = short_hostname()
    if any(name == "slurmd" for name in running_daemons().values()):
        raise ClusterError("a slurmd already runs on this host: its cgroups (slurm_<host>) would be shared")
    remove_stale_cgroups(host)
    if directory is None:
        made = Path(tempfile.mkdtemp(prefix="babysit-slurm-", dir="/var/tmp"))
    else:
        made = Path(directory).absolute()
        if made.exists() and any(made.iterdir()):
            raise ClusterError(f"{made} is not empty")
        made.mkdir(parents=True, exist_ok=True)
    c = Cluster(made, host, cgroups=cgroup_v1_available() if use_cgroups is None else use_cgroups)
    if not c.cgroups:
        log("without cgroups: proctrack/linuxproc, jobacct_gather/linux, memory limits enforced by polling")
    started = time.monotonic()
    try:
        try:
            c.dir.chmod(0o755)
            check_traversable(c.dir)
            prepare(c)
            start_munged(c)
            start_mariadb(c)
            start_slurm(c)
        except (ClusterError, OSError, subprocess.SubprocessError):
            log_tails(c)
            raise
        log(f"cluster up in {time.monotonic() - started:.1f}s: SLURM_CONF={c.conf}")
        yield c
    finally:
        on_stop()
        stopping = time.monotonic()
        problems = stop(c)
        shutil.rmtree(c.dir, ignore_errors=True)
        for problem in problems:
            log(f"NOT CLEAN: {problem}")
        log(f"cluster stopped and removed in {time.monotonic() - stopping:.1f}s")
        if problems:
            raise ClusterError("; ".join(problems))


# --- entry point --------------------------------------------------------------------------------


class Runner:
    """Signals go to COMMAND while it runs; before, they end the start-up; after, the cleanup goes on."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.stopping = False

    def stop(self) -> None:
        self.stopping = True

    def on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.proc is not None and self.proc.poll() is None:
            log(f"{name}: ending the command, then the cluster")
            # a terminal's Ctrl-C reached COMMAND already (same process group)
            if signum != signal.SIGINT:
                self.proc.send_signal(signum)
        elif not self.stopping:
            log(f"{name}: stopping the cluster")
            self.stopping = True
            raise Interrupted(name)
        else:
            log(f"{name}: cleaning up, please wait")

    def run(self, command: list[str], env: dict[str, str], timeout: float | None) -> int:
        try:
            self.proc = subprocess.Popen(command, env=env,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        except OSError as e:
            raise ClusterError(f"cannot run {command[0]}: {e}") from e
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"timed out after {timeout:.0f}s: ending {command[0]}")
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            return EXIT_TIMEOUT
        return 128 - status if status < 0 else status  # killed by signal N: 128+N, as a shell says


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, help="end COMMAND after this many seconds")
    parser.add_argument("--dir", help="the cluster's directory (must not exist or be empty; removed after)")
    parser.add_argument("--no-cgroups", action="store_true",
                        help="track jobs through /proc, not cgroup v1 (the default where v1 is missing)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    runner = Runner()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, runner.on_signal)
    try:
        if os.geteuid() == 0:
            ensure_packages()
        with cluster(args.dir, use_cgroups=False if args.no_cgroups else None, on_stop=runner.stop) as c:
            control = serve_control(c)
            return runner.run(command, {**c.env(), "BABYSIT_SLURM_CONTROL": str(control)}, args.timeout)
    except (ClusterError, subprocess.CalledProcessError) as e:
        log(f"error: {e}")
        return EXIT_USAGE
    except Interrupted as e:
        log(f"interrupted by {e} during start-up")
        return 128 + signal.Signals[str(e)].value


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
