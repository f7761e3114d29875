"""babysitd's entry point: connect, open the executor and the store, serve until told to stop.

A supervision loop that ends makes babysitd exit non-zero, so systemd starts a fresh one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import time
from pathlib import Path

from dbus_fast.aio import MessageBus

from babysit import __version__
from babysit.common import bus as session_bus
from babysit.common import config
from babysit.daemon import state_dir, store
from babysit.daemon.babysitd import Babysitd
from babysit.daemon.refusing import refuse_until_safe
from babysit.daemon.service import BusService
from babysit.executors.base import Executor

log = logging.getLogger("babysitd")
STORE_RETRY_FIRST_S = 0.5  # a store that cannot be opened yet is tried again after this, then twice as long...
STORE_RETRY_MAX_S = 5.0  # ...up to this


class SupervisionEnded(Exception):
    """A loop that watches tasks ended: babysitd exits non-zero, so systemd starts a fresh one."""


async def open_executor(bus: MessageBus, settings: config.Config) -> Executor:
    """The executor the config names (each is imported only where it is used)."""
    if settings.executor == "slurm":
        from babysit.executors.slurm.executor import SlurmExecutor

        return await SlurmExecutor.connect(settings, state_dir.host_dir(settings))
    from babysit.executors.systemd.executor import SystemdExecutor
    from babysit.executors.systemd.manager import Systemd

    return await SystemdExecutor.connect(Systemd(bus), settings, state_dir.host_dir(settings))


async def open_store(path: Path) -> tuple[store.Store, str | None]:
    """The store, waiting while it is only unavailable (locked, a full or failing disk): its queue and history
    are never discarded for that. The reason is logged, where `babysit` shows it to a caller kept waiting."""
    pause = STORE_RETRY_FIRST_S
    while True:
        try:
            return store.open_or_replace(path, time.time())
        except store.Unavailable as e:
            log.warning("%s; trying again in %.1fs (nothing in it is discarded)", e, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, STORE_RETRY_MAX_S)


async def serve() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # a few cgroup files stay open per running task (cgroup.CgroupFiles): the usual soft limit of 1024
    # descriptors would cap the number of tasks
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    os.umask(0o077)  # its directories 0700, its files 0600, however it was started
    bus = await session_bus.connect()
    settings = config.load()
    try:
        state_dir.make_private(settings)
    except state_dir.Unsafe as e:
        await refuse_until_safe(bus, str(e), lambda: state_dir.make_private(settings))
        raise SupervisionEnded("state directory") from None  # systemd starts a whole babysitd now
    executor = await open_executor(bus, settings)
    moved = state_dir.take_over_shared_store(settings)
    if moved:
        log.info("moved the store at %s, from before there was one per host, to %s", moved,
                 state_dir.store_path(settings))
    db, damaged = await open_store(state_dir.store_path(settings))
    daemon = Babysitd(executor, db, settings, [damaged] if damaged else [])
    scheduler = daemon.scheduler
    for warning in scheduler.warnings:
        log.warning("%s", warning)
    service = BusService(bus, scheduler, notify=settings.notify)
    daemon.ledger.publisher = service
    await daemon.start()
    await service.export()  # the name last: D-Bus activation callers only get a ready daemon
    loop = asyncio.get_running_loop()
    supervision = {loop.create_task(work): name for work, name in (
        (daemon.supervisor.sample_forever(), "sampling"), (scheduler.queue.recheck_forever(), "queue re-check"),
        (executor.supervise(), f"{executor.kind} supervision"))}
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("babysitd %s ready (tick %.1fs, host %s bytes / %d cores)", __version__, settings.tick_s,
             executor.host.mem_bytes, executor.host.cores)
    stopped, lost_bus = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(bus.wait_for_disconnect())
    done, _ = await asyncio.wait([stopped, lost_bus, *supervision], return_when=asyncio.FIRST_COMPLETED)
    for work in supervision:
        work.cancel()
    await executor.close()
    bus.disconnect()
    ended = [supervision[work] for work in done if work in supervision]
    if ended:
        failure = next(iter(done)).exception() if len(done) == 1 else None
        log.critical("the %s loop ended (%r): exiting so that systemd starts babysitd afresh", ended[0], failure)
        raise SupervisionEnded(ended[0])
    if lost_bus in done and not stopped.done():
        log.critical("lost the session bus connection (%r): exiting so that systemd restarts babysitd",
                     lost_bus.exception() if not lost_bus.cancelled() else None)
        raise SupervisionEnded("bus")


def main() -> None:
    try:
        asyncio.run(serve())
    except SupervisionEnded:
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
