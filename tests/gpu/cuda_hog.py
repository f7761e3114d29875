"""A real CUDA program, stdlib only: allocate BYTES on the first visible GPU through the driver API
(libcuda.so.1, which every NVIDIA driver installs), say so, and hold it for SECONDS.

    python3 cuda_hog.py BYTES [SECONDS]

It obeys CUDA_VISIBLE_DEVICES as every CUDA program does (the driver reads it); with no visible GPU it
prints the driver's error and exits 1.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time


def check(result: int, what: str) -> None:
    if result != 0:
        print(f"CUDA error {result} in {what}", file=sys.stderr, flush=True)
        sys.exit(1)


def main() -> int:
    nbytes, seconds = int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 3600.0
    cuda = ctypes.CDLL("libcuda.so.1")
    check(cuda.cuInit(0), "cuInit")
    device, context, pointer = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    check(cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
    uuid = (ctypes.c_char * 16)()
    check(cuda.cuDeviceGetUuid(uuid, device), "cuDeviceGetUuid")
    check(cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device), "cuCtxCreate")
    check(cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(nbytes)), "cuMemAlloc")
    raw = bytes(uuid).hex()
    print(f"cuda_hog {os.getpid()}: allocated {nbytes} bytes on GPU-{raw[:8]}-{raw[8:12]}-{raw[12:16]}-"
          f"{raw[16:20]}-{raw[20:]}", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1)
        print(f"cuda_hog {os.getpid()}: holding", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
