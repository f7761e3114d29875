"""A fake NVIDIA driver for tests: libnvidia-ml.so.1 built from nvml.c, fed from a directory of plain files.

Point a program at it with LD_LIBRARY_PATH=build(dir) and BABYSIT_FAKE_NVML=<figures>: pynvml then loads
it as the real library. See nvml.c for the files it reads, and hog.py for a process that holds GPU memory.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .hog import write_allocation

SOURCE = Path(__file__).with_name("nvml.c")
LIBRARY = "libnvidia-ml.so.1"


def build(dest: Path) -> Path:
    """Compile the library into DEST unless an up-to-date one is there; the folder for LD_LIBRARY_PATH."""
    dest.mkdir(parents=True, exist_ok=True)
    library = dest / LIBRARY
    if library.exists() and library.stat().st_mtime >= SOURCE.stat().st_mtime:
        return dest
    partial = dest / f".{LIBRARY}.{os.getpid()}"  # renamed into place: a program loading it never sees half
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(partial), str(SOURCE)],
                   check=True)
    os.replace(partial, library)
    return dest


def allocate(directory: Path, uuid: str, nbytes: int, pid: int | None = None) -> Path:
    """Say that PID (this process by default) holds NBYTES on the GPU UUID, replacing what its file said."""
    return write_allocation(directory, uuid, nbytes, os.getpid() if pid is None else pid)
