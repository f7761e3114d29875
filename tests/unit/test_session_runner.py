"""The session runner's pure parts: reading the cgroup layout and choosing a mode."""

from pathlib import Path

from babysit.cgroup import parse_mountinfo, parse_proc_cgroup
from tests.session.cgroups import Hierarchy, hierarchies
from tests.session.run import choose_mode, own_session_is_up

HYBRID_CGROUP = """\
9:name=systemd:/
4:memory:/process_api/c1084
3:cpuset:/
1:cpu,cpuacct:/
0::/
"""
HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_proc_cgroup_maps_keys_to_paths() -> None:
    assert parse_proc_cgroup(HYBRID_CGROUP)["memory"] == "/process_api/c1084"
    assert parse_proc_cgroup(HYBRID_CGROUP)[""] == "/"


def test_mountinfo_finds_every_hierarchy_and_ignores_flags() -> None:
    mounts = parse_mountinfo(HYBRID_MOUNTINFO)
    assert mounts == {
        "cpu,cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "memory": Path("/sys/fs/cgroup/memory"),
        "cpuset": Path("/sys/fs/cgroup/cpuset"),
        "name=systemd": Path("/sys/fs/cgroup/systemd"),
        "": Path("/sys/fs/cgroup/unified"),
    }


def test_hierarchies_place_this_process() -> None:
    found = {h.key: h for h in hierarchies(HYBRID_CGROUP, HYBRID_MOUNTINFO)}
    assert found["memory"].dir == Path("/sys/fs/cgroup/memory/process_api/c1084")
    assert found["cpuset"].is_cpuset and not found["memory"].is_cpuset
    assert found["name=systemd"].mount_options == "none,name=systemd"
    assert found[""].mount_options is None


def test_pure_v2_host() -> None:
    found = hierarchies("0::/user.slice\n", "30 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    assert found == [Hierarchy("", Path("/sys/fs/cgroup"), "/user.slice")]


def test_mode_choice(tmp_path: Path) -> None:
    (tmp_path / "systemd").mkdir()
    (tmp_path / "systemd" / "private").touch()
    (tmp_path / "bus").touch()
    with_session = {"XDG_RUNTIME_DIR": str(tmp_path)}
    assert own_session_is_up(with_session)
    assert not own_session_is_up({"XDG_RUNTIME_DIR": str(tmp_path), "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nope"})
    assert not own_session_is_up({})
    assert choose_mode(0, with_session) == "private"
    assert choose_mode(1000, with_session) == "direct"
    assert choose_mode(1000, {}) == "missing"
