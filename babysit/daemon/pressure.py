"""Host memory pressure: free memory below the threshold stops babysit's own culprits, or is only noted
when it comes from elsewhere (policy.pressure_victims decides which)."""

from __future__ import annotations

import logging
import time

from babysit.common.config import Config
from babysit.common.host import meminfo
from babysit.core import policy, report
from babysit.core.protocol import KillReason
from babysit.daemon.deadlines import Stop
from babysit.daemon.ledger import Ledger

log = logging.getLogger("babysitd")


class Pressure:
    def __init__(self, ledger: Ledger, settings: Config, stop: Stop) -> None:
        self.ledger = ledger
        self.config = settings
        self.stop = stop
        self.external = False  # pressure from outside babysit is reported once per episode
        self.since: float | None = None  # monotonic start of the current low-memory episode

    def threshold(self) -> int:
        """Free memory below this many bytes is pressure (config pressure_free_bytes or pressure_free_pct)."""
        if self.config.pressure_free_bytes:
            return self.config.pressure_free_bytes
        return int(meminfo()["MemTotal"] * self.config.pressure_free_pct / 100)

    async def check(self, free: int, threshold: int) -> None:
        """Low free memory: stop babysit's own culprits, or note pressure that comes from elsewhere."""
        running = [t for t in self.ledger.running() if not t.kill_requested]
        loads = [policy.Load(t.name, t.usage.mem_bytes, t.spec.estimates.mem_bytes) for t in running]
        stopping = sum(t.usage.mem_bytes for t in self.ledger.running() if t.kill_requested)
        now = time.monotonic()
        if free >= threshold:
            self.since = None
        elif self.since is None:
            self.since = now
        sustained = self.since is not None and now - self.since >= self.config.pressure_grace_s
        verdict = policy.pressure_victims(loads, free, threshold, sustained, stopping)
        if verdict.external:
            if not self.external:
                log.warning("host memory pressure from outside babysit (%d bytes short); nothing stopped",
                            verdict.shortfall_bytes)
                for task in running:
                    self.ledger.add_event(task, "external_pressure", {"name": task.name, "at": report.timestamp(
                        time.time()), "shortfall_bytes": verdict.shortfall_bytes})
            self.external = True
            return
        self.external = False
        if verdict.victims:
            # the grace starts again: whether well-behaved tasks must go too is judged on what the host
            # looks like once these stops have freed their memory, not on the episode they end (in CI, a
            # runaway's stop and memory taken outside meanwhile once cost a 3 MiB bystander its run)
            self.since = now
        for name in verdict.victims:
            log.warning("host memory pressure (%d bytes short): stopping %s", verdict.shortfall_bytes, name)
            await self.stop(self.ledger.tasks[name], KillReason.PRESSURE)
