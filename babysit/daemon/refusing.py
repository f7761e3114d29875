"""A babysitd that will not keep its state where it would have to (state_dir.Unsafe) stays up and says why to
every request, in one line, instead of exiting: systemd would restart it each second, and a D-Bus activation
that fails without a restart leaves the bus's activation pending, so a later start hangs. It looks again
now and then, and ends (for systemd to start a whole babysitd) once the place is safe."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, NoReturn, cast

from dbus_fast.aio import MessageBus

from babysit.core.protocol import StateUnsafe
from babysit.daemon.service import BusService, Verbs

log = logging.getLogger("babysitd")
LOOK_AGAIN_S = 5.0


class Refusing:
    """Every verb of the scheduler, each refused with the reason."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __getattr__(self, verb: str) -> Callable[..., NoReturn]:
        def refuse(*args: Any, **kwargs: Any) -> NoReturn:
            raise StateUnsafe(self.why)
        return refuse


async def refuse_until_safe(bus: MessageBus, why: str, safe: Callable[[], object]) -> None:
    """Answer every request with `why` until `safe()` stops raising (each LOOK_AGAIN_S); then return."""
    log.critical("%s", why)
    await BusService(bus, cast(Verbs, Refusing(why)), notify=False).export()
    while True:
        await asyncio.sleep(LOOK_AGAIN_S)
        try:
            safe()
        except Exception:  # noqa: BLE001 (still unsafe, for this reason or another: it was said once)
            continue
        log.info("the state directory is usable now: babysitd starts afresh")
        return
