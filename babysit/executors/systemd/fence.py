"""Keeping a task to the GPUs it was given, where the user's systemd can.

`DeviceAllow=` is enforced by the cgroup's device controller, which a user's manager does not get: cgroup
v1 does not delegate it, and on v2 it takes BPF programs only a privileged manager may load. Measured on
Debian 12 (systemd 252, cgroup v2): a user unit with `DevicePolicy=closed` opens an unlisted GPU node
as freely as any other unit, while the same unit under the system manager gets EPERM. What a user's
manager can do is give the unit a /dev of its own (`PrivateDevices=`, which needs `PrivateUsers=` there:
an unprivileged user namespace) with only the task's device nodes bound into it: another GPU's node
is then not there at all. Both are set, so the fence holds under either kind of manager; where a private
/dev cannot be made (user namespaces turned off), only `CUDA_VISIBLE_DEVICES` keeps the task to its GPUs,
and `babysit ping` says so.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

from babysit.core.gpus import Gpu, device_allow

# a unit with a private /dev starts at all (the user manager can make an unprivileged user namespace)
PROBE = ["systemd-run", "--user", "--wait", "--quiet", "--collect", "--property=PrivateUsers=yes",
         "--property=PrivateDevices=yes", "true"]
NO_FENCE = ("this host's user manager cannot give a task a /dev of its own (PrivateDevices= needs unprivileged "
            "user namespaces), so a task given GPUs could still open another GPU's device node: only "
            "CUDA_VISIBLE_DEVICES keeps it to its own; fix: allow unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1, or the AppArmor profile that restricts them), then "
            "systemctl --user restart babysitd")


def private_dev_works() -> bool:
    """Whether a unit with a private /dev starts here (asked once, when babysitd starts on a host with GPUs)."""
    try:
        return subprocess.run(PROBE, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def fence_properties(uuids: Sequence[str], host_gpus: Sequence[Gpu], private_dev: bool) -> dict[str, Any]:
    """The unit properties that keep a task to its GPUs: their nodes and the control nodes, nothing else."""
    if not uuids:
        return {}
    allowed = device_allow(host_gpus, uuids)
    fenced: dict[str, Any] = {"DevicePolicy": "closed", "DeviceAllow": allowed}
    if private_dev:  # the nodes a host lacks (no nvidia-uvm loaded yet) are left out, not an error
        fenced |= {"PrivateUsers": True, "PrivateDevices": True,
                   "BindPaths": [(node, node, True, 0) for node, _ in allowed]}
    return fenced
