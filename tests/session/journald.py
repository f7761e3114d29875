"""journald inside the private session, run the way systemd runs it on a host (stdlib only).

On a host, `systemctl restart systemd-journald` loses no output of running services: journald hands
each service's stdout stream to systemd's file descriptor store (`FDSTORE=1` on $NOTIFY_SOCKET) and
gets them back as socket-activation fds when it starts again. The runner keeps that store here, so a
test can restart journald under running tasks exactly as an administrator would.
"""

from __future__ import annotations

import array
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

NOTIFY_SOCKET = "/run/systemd/journald-notify"
# Runs between fork and exec: move the stored fds to 3.. and hand them over as systemd does.
SHIM = """
import fcntl, os, sys
fds = [int(fd) for fd in os.environ.pop("JOURNALD_STORED_FDS").split(",") if fd]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(fds)) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
if fds:
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=":".join(["stored"] * len(fds)))
os.execv(sys.argv[1], sys.argv[1:])
"""


class Journald:
    """journald with a file descriptor store; `restart()` is `systemctl restart systemd-journald`."""

    def __init__(self, binary: str, start_in: Callable[..., subprocess.Popen]) -> None:
        self.binary = binary
        self.start_in = start_in
        self.stored: list[int] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.barrier = threading.Event()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(NOTIFY_SOCKET)
        threading.Thread(target=self._receive, daemon=True).start()
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 10) -> None:
        with self.lock:
            fds = self._prune()
        self.ready.clear()
        env = {**os.environ, "NOTIFY_SOCKET": NOTIFY_SOCKET, "JOURNALD_STORED_FDS": ",".join(map(str, fds))}
        self.process = self.start_in([sys.executable, "-c", SHIM, self.binary], env=env, pass_fds=fds)
        if not self.ready.wait(timeout):
            raise RuntimeError(f"journald did not report READY=1 within {timeout:.0f}s")

    def restart(self) -> None:
        assert self.process is not None
        self.resume()  # a paused journald would never see the SIGTERM
        self.process.terminate()
        self.process.wait(timeout=30)
        self._barrier()
        self.start()

    def pause(self) -> None:
        """Stop journald reading (SIGSTOP), as a journald busy with a flood or starved of CPU does."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def _barrier(self, timeout: float = 10) -> None:
        """Wait until every message the old journald sent is handled: datagrams arrive in order."""
        self.barrier.clear()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"BARRIER=1", NOTIFY_SOCKET)
        if not self.barrier.wait(timeout):
            raise RuntimeError("the notify socket's barrier did not come through")

    def _receive(self) -> None:
        """sd_notify messages from journald: READY=1, and stream fds to keep (FDSTORE=1)."""
        while True:
            fds = array.array("i")
            data, ancdata, _flags, _addr = self.notify.recvmsg(4096, socket.CMSG_SPACE(253 * fds.itemsize))
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            fields = data.decode(errors="replace").splitlines()
            with self.lock:
                if "FDSTORE=1" in fields:
                    self.stored += list(fds)
                else:
                    for fd in fds:
                        os.close(fd)
            if "READY=1" in fields:
                self.ready.set()
            if "BARRIER=1" in fields:
                self.barrier.set()

    def _prune(self) -> list[int]:
        """Drop streams whose writer has gone (as systemd does on POLLHUP); the rest go to the new journald."""
        poller = select.poll()
        for fd in self.stored:
            poller.register(fd, select.POLLHUP)
        gone = {fd for fd, events in poller.poll(0) if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL)}
        for fd in gone:
            os.close(fd)
        self.stored = [fd for fd in self.stored if fd not in gone]
        return list(self.stored)


class Meminfo:
    """The session's /proc/meminfo with a MemAvailable a test sets: how much memory is free is the whole
    machine's, and moves with everything else that runs on it; a test of what babysit does at a given
    figure must not depend on it (a file bound over the kernel's, in the session's mount namespace only,
    as LXCFS does for containers)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.bound = False

    def show(self, available: str) -> None:
        real = Path("/proc/meminfo").read_text() if not self.bound else Path(self.path).read_text()
        lines = [f"MemAvailable:   {int(available) // 1024} kB" if line.startswith("MemAvailable:") else line
                 for line in real.splitlines()]
        Path(self.path).write_text("\n".join(lines) + "\n")
        if not self.bound:
            subprocess.run(["mount", "--bind", self.path, "/proc/meminfo"], check=True)
            self.bound = True

    def real(self) -> None:
        if self.bound:
            subprocess.run(["umount", "/proc/meminfo"], check=True)
            self.bound = False


def serve_control(path: str, owner_uid: int, owner_gid: int, journald: Journald) -> None:
    """A socket the session's user may use to ask root for what an administrator would do, or for a
    machine figure a test must hold still (meminfo)."""
    meminfo = Meminfo(f"{path}-meminfo")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chown(path, owner_uid, owner_gid)
    os.chmod(path, 0o600)
    server.listen()

    def loop() -> None:
        while True:
            connection, _ = server.accept()
            with connection, connection.makefile("rw") as stream:
                request, *args = stream.readline().split()
                actions = {"restart-journald": journald.restart, "pause-journald": journald.pause,
                           "resume-journald": journald.resume, "meminfo": meminfo.show, "meminfo-real": meminfo.real}
                try:
                    if request not in actions:
                        raise ValueError(f"unknown request {request!r}")
                    actions[request](*args)
                    stream.write("ok\n")
                except Exception as e:  # the answer carries it to the test that asked
                    stream.write(f"error: {e}\n")

    threading.Thread(target=loop, daemon=True).start()
