"""Play a CUDA program on the fake NVML: hold BYTES on the first visible GPU for SECONDS, saying so each second.

    python3 hog.py BYTES [SECONDS] [--grow-to=BYTES --grow-after=SECONDS]

The GPU is the first entry of CUDA_VISIBLE_DEVICES (a UUID or an index, as CUDA takes them), or the first
line of $BABYSIT_FAKE_NVML/devices if that is unset. Stdlib only: it runs under any python3.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

NO_DEVICE = "CUDA error: no CUDA-capable device is detected"


def write_allocation(directory: Path, uuid: str, nbytes: int, pid: int) -> Path:
    """Say that PID holds NBYTES on UUID: replaces its procs file whole, so no reader sees half of it."""
    procs = directory / "procs"
    procs.mkdir(parents=True, exist_ok=True)
    path = procs / str(pid)
    partial = procs / f".{pid}.partial"  # not a pid: the library skips it
    partial.write_text(f"{uuid} {nbytes}\n")
    os.replace(partial, path)
    return path


def device_uuids(directory: Path) -> list[str]:
    """The UUIDs in the devices file, in index order."""
    try:
        lines = (directory / "devices").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]


def visible_device(directory: Path, visible: str | None) -> str | None:
    """The GPU CUDA would give this process as device 0, or None where it would find none."""
    uuids = device_uuids(directory)
    if visible is None:
        return uuids[0] if uuids else None
    first = visible.split(",")[0].strip()
    if first.isdigit():
        return uuids[int(first)] if int(first) < len(uuids) else None
    return first if first in uuids else None


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nbytes", type=int, metavar="BYTES")
    parser.add_argument("seconds", type=float, nargs="?", default=3600.0, metavar="SECONDS")
    parser.add_argument("--grow-to", type=int, metavar="BYTES", help="raise the allocation to this, once")
    parser.add_argument("--grow-after", type=float, default=0.0, metavar="SECONDS", help="when to raise it")
    return parser.parse_args(argv)


def die_by_signal(path: Path, signum: int) -> None:
    """Go the way a killed CUDA program goes (status -signum), without leaving a file a later pid could inherit."""
    path.unlink(missing_ok=True)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def hold(directory: Path, uuid: str, args: argparse.Namespace) -> None:
    started = time.monotonic()
    path = write_allocation(directory, uuid, args.nbytes, os.getpid())
    signal.signal(signal.SIGTERM, lambda signum, _frame: die_by_signal(path, signum))
    held, grow_at = args.nbytes, None if args.grow_to is None else started + args.grow_after
    deadline, tick = started + args.seconds, started + 1
    print(f"hog {os.getpid()}: allocated {held} bytes on {uuid}", flush=True)
    try:
        while (now := time.monotonic()) < deadline:
            if grow_at is not None and now >= grow_at:
                held, grow_at = args.grow_to, None
                write_allocation(directory, uuid, held, os.getpid())
                print(f"hog {os.getpid()}: grew to {held} bytes", flush=True)
            if now >= tick:
                print(f"hog {os.getpid()}: holding {held} bytes on {uuid}, {now - started:.0f} s", flush=True)
                tick += 1
            wake = min(tick, deadline) if grow_at is None else min(tick, deadline, grow_at)
            time.sleep(max(0.0, wake - now))
    finally:
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    root = os.environ.get("BABYSIT_FAKE_NVML", "")  # unset: a host without the driver
    uuid = visible_device(Path(root), os.environ.get("CUDA_VISIBLE_DEVICES")) if root else None
    if uuid is None:
        print(NO_DEVICE, file=sys.stderr)
        return 1
    hold(Path(root), uuid, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
