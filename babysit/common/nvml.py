"""The host's NVIDIA GPUs, read through NVML (the optional `nvidia-ml-py` binding: `pip install 'babysit[gpu]'`).

No binding, no driver, or no device all mean no GPUs; `why_none` says which, for `babysit ping`. NVML is
initialised once per process (it is slow to start on hosts without persistence mode) and read on demand.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from babysit.core.gpus import Gpu

log = logging.getLogger("babysitd")
READ_EVERY_S = 0.5
DRIVER = "/proc/driver/nvidia"  # there while NVIDIA's kernel driver is loaded


class Nvml:
    """One process's view of NVML: its devices now, or why there are none."""

    def __init__(self) -> None:
        self.library: Any = None
        self.why_none = ""
        self.last: tuple[Gpu, ...] = ()
        self.read_at = -1e9
        self.said: set[str] = set()
        try:
            import pynvml  # an optional extra: a host without GPUs need not install it
        except ImportError:
            self.why_none = ("none: the NVML binding is not installed (pip install 'babysit[gpu]')"
                             if Path(DRIVER).exists() else "none: no NVIDIA driver on this host")
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            self.why_none = f"none: NVML cannot start ({e}): no NVIDIA driver, or none loaded"
            return
        self.library = pynvml

    def read(self) -> tuple[Gpu, ...]:
        """Every device with its memory, utilisation and compute processes now (at most READ_EVERY_S old: the
        sampling of each GPU task and every admission ask, and a GPU's figures move no faster); () without
        NVML."""
        if self.library is None:
            return ()
        if time.monotonic() - self.read_at < READ_EVERY_S:
            return self.last
        nvml = self.library
        before = {gpu.index: gpu for gpu in self.last}
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as e:  # the devices are as they were: a GPU does not vanish on one error
            self.complain(f"counting the GPUs failed: {e}")
            count = len(before)
        read = []
        for index in range(count):
            try:
                read.append(device(nvml, index))
            except nvml.NVMLError as e:  # this one as last seen (if ever): the others are read as they are
                self.complain(f"reading GPU {index} failed: {e}")
                if index in before:
                    read.append(before[index])
        self.last, self.read_at = tuple(read), time.monotonic()
        return self.last

    def complain(self, what: str) -> None:
        """Said once per kind of failure, not at every read."""
        if what not in self.said:
            self.said.add(what)
            log.warning("%s; babysit keeps its last reading", what)

    def why(self) -> str:
        """Why babysit sees no GPU here, in words; empty where it sees one."""
        if self.why_none or self.read():
            return self.why_none
        return "none: NVML runs and shows no device"


def device(nvml: Any, index: int) -> Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    processes = {p.pid: p.usedGpuMemory or 0 for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)}
    return Gpu(index=index, uuid=text(nvml.nvmlDeviceGetUUID(handle)), name=text(nvml.nvmlDeviceGetName(handle)),
               minor=nvml.nvmlDeviceGetMinorNumber(handle), total_bytes=memory.total, used_bytes=memory.used,
               utilization_pct=float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu), processes=processes)


def text(value: str | bytes) -> str:
    """Older bindings return bytes."""
    return value.decode() if isinstance(value, bytes) else value
