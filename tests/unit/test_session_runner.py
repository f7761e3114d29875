"""The session runner's pure parts: reading the cgroup layout, choosing a mode, finding a user's own babysit."""

import os
from pathlib import Path

import pytest

from babysit.cli import install
from babysit.common import config
from babysit.daemon import state_dir
from babysit.executors.systemd.cgroup import parse_mountinfo, parse_proc_cgroup
from tests.session.cgroups import Hierarchy, hierarchies
from tests.session.run import babysit_paths, babysit_units, choose_mode, missing_parents, own_session_is_up, refusal

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


HOME = Path("/home/alice")


def test_babysit_paths_are_where_babysit_writes_by_default() -> None:
    assert babysit_paths({}, HOME) == [
        HOME / ".config/systemd/user/babysitd.service",
        HOME / ".config/systemd/user/babysit.slice",
        HOME / ".local/share/dbus-1/services/org.babysit.service",
        HOME / ".config/babysit",
        HOME / ".local/state/babysit",
    ]


def test_babysit_paths_follow_the_xdg_variables() -> None:
    env = {"XDG_CONFIG_HOME": "/c", "XDG_DATA_HOME": "/d", "XDG_STATE_HOME": "/s"}
    assert babysit_paths(env, HOME) == [
        Path("/c/systemd/user/babysitd.service"), Path("/c/systemd/user/babysit.slice"),
        Path("/d/dbus-1/services/org.babysit.service"), Path("/c/babysit"), Path("/s/babysit"),
    ]


def test_babysit_paths_match_what_babysit_itself_uses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the runner cannot import babysit (it runs before any virtualenv): keep its copy of the paths true
    for var, sub in (("XDG_CONFIG_HOME", "c"), ("XDG_DATA_HOME", "d"), ("XDG_STATE_HOME", "s")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    paths = babysit_paths(dict(os.environ), tmp_path)
    assert set(install.targets().values()) <= set(paths)
    assert config.default_path().parent in paths
    assert state_dir.state_home(config.Config()) in paths


# `systemctl --user list-units --all --plain --no-legend --full 'babysit*'`
LISTING = """\
babysit-t-1.service     loaded    active   running Supervised task t-1
babysit-t-2.service     loaded    failed   failed  Supervised task t-2
babysit-gone.service    not-found inactive dead    babysit-gone.service
babysit.slice           loaded    active   active  babysit.slice
babysitd.service        loaded    active   running babysit scheduler: supervised background tasks
babysitter.timer        loaded    active   waiting Someone else's timer
"""


def test_babysit_units_are_the_daemon_its_slice_and_tasks_that_are_loaded() -> None:
    assert babysit_units(LISTING) == ["babysit-t-1.service", "babysit-t-2.service", "babysit.slice",
                                     "babysitd.service"]
    assert babysit_units("") == []


def test_a_unit_marked_failed_is_still_found() -> None:
    assert babysit_units("● babysitd.service loaded failed failed babysit scheduler\n") == ["babysitd.service"]


def test_refusal_lists_what_it_found_and_the_private_run() -> None:
    message = refusal(["/home/alice/.local/state/babysit", "loaded unit babysitd.service"],
                      "tests/session/run.py", ["--timeout", "1500", ".venv/bin/pytest", "-k", "a b"])
    assert "  /home/alice/.local/state/babysit\n  loaded unit babysitd.service\n" in message
    assert message.endswith("sudo python3 tests/session/run.py --timeout 1500 .venv/bin/pytest -k 'a b'")


def test_missing_parents_are_the_directories_still_to_make_deepest_first(tmp_path: Path) -> None:
    (tmp_path / ".config").mkdir()
    paths = babysit_paths({}, tmp_path)
    assert missing_parents(paths) == [
        tmp_path / ".local/share/dbus-1/services",
        tmp_path / ".config/systemd/user",
        tmp_path / ".local/share/dbus-1",
        tmp_path / ".config/systemd",
        tmp_path / ".local/share",
        tmp_path / ".local/state",
        tmp_path / ".local",
    ]  # each before its parent, so removing them in this order empties a parent before it is tried
