import os
from pathlib import Path

import pytest

from babysit.common import config
from babysit.core.protocol import InvalidArgument
from babysit.executors.systemd.cgroup import (
    CLOCK_TICKS,
    CgroupFiles,
    Layout,
    missing_controllers,
    parse_cpu_stat,
    parse_proc_stat_cpu,
    read_sample,
)

V1_MOUNTINFO = """\
32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
"""


def test_config() -> None:
    assert config.parse("") == config.Config()
    assert config.parse("tick_s = 0.2\nmem_budget_pct = 75").tick_s == 0.2
    for bad in ("tick = 1", "tick_s = -1", "tick_s = 'fast'", "tick_s ="):
        with pytest.raises(InvalidArgument):
            config.parse(bad)


@pytest.mark.parametrize("line", ["tick_s = inf", "stop_grace_s = nan", "mem_budget_pct = 101",
                                  "tolerance_s = 1e300", "max_live_tasks = inf", "history_max_days = nan"])
def test_config_refuses_what_is_not_a_finite_sane_figure_and_names_the_key(line: str) -> None:
    """Seen in review: `tick_s = inf` turned sampling off without a word, `stop_grace_s = nan` broke every start."""
    with pytest.raises(InvalidArgument, match=f"config.toml: {line.split()[0]} must be a number more than 0"):
        config.parse(line)


def test_config_flags_and_history_bounds() -> None:
    parsed = config.parse("notify = true\nhistory_max_runs = 500\nhistory_max_days = 30\n")
    assert (parsed.notify, parsed.history_max_runs, parsed.history_max_days) == (True, 500, 30)
    assert config.Config().notify is False
    with pytest.raises(InvalidArgument, match="notify must be true or false"):
        config.parse("notify = 1\n")


def test_config_names_the_executor_and_its_slurm_options() -> None:
    parsed = config.parse('executor = "slurm"\nslurm_partition = "gpu"\nslurm_account = "lab"\n')
    assert (parsed.executor, parsed.slurm_partition, parsed.slurm_account) == ("slurm", "gpu", "lab")
    assert config.Config().executor == "systemd"
    with pytest.raises(InvalidArgument, match="executor must be one of systemd, slurm"):
        config.parse('executor = "kubernetes"\n')
    with pytest.raises(InvalidArgument, match="slurm_partition must be a string"):
        config.parse("slurm_partition = 3\n")


def test_layout_v1_and_v2() -> None:
    v1 = Layout.from_mountinfo(V1_MOUNTINFO)
    assert (v1.memory_root, v1.cpu_root, v1.v2) == (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/cpuacct"),
                                                    False)


def test_read_sample_v1(tmp_path: Path) -> None:
    unit = "user.slice/babysit.slice/babysit-x.service"
    mem, cpu = tmp_path / "memory" / unit, tmp_path / "cpuacct" / unit
    mem.mkdir(parents=True)
    cpu.mkdir(parents=True)
    (mem / "memory.usage_in_bytes").write_text("1048576\n")
    (mem / "memory.max_usage_in_bytes").write_text("2097152\n")
    (mem / "memory.failcnt").write_text("3\n")
    (cpu / "cpuacct.usage").write_text("1500000000\n")
    layout = Layout(tmp_path / "memory", tmp_path / "cpuacct", v2=False)
    files = CgroupFiles()
    sample = read_sample(layout, "/" + unit, files)
    assert sample is not None
    assert (sample.mem_bytes, sample.peak_mem_bytes, sample.cpu_ns, sample.mem_failcnt) == (1 << 20, 2 << 20,
                                                                                            1_500_000_000, 3)
    # the files stay open and are read afresh in place
    (mem / "memory.usage_in_bytes").write_text("2097152\n")
    sample = read_sample(layout, "/" + unit, files)
    assert sample is not None and sample.mem_bytes == 2 << 20
    files.close()
    assert read_sample(layout, "/user.slice/gone.service", CgroupFiles()) is None


def test_read_sample_v2(tmp_path: Path) -> None:
    unit = tmp_path / "babysit.slice" / "babysit-x.service"
    unit.mkdir(parents=True)
    (unit / "memory.current").write_text("4096\n")
    (unit / "memory.peak").write_text("8192\n")
    (unit / "cpu.stat").write_text("usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n")
    sample = read_sample(Layout(tmp_path, tmp_path, v2=True), "/babysit.slice/babysit-x.service", CgroupFiles())
    assert sample is not None and (sample.mem_bytes, sample.peak_mem_bytes, sample.cpu_ns) == (4096, 8192, 2_500_000)
    assert parse_cpu_stat("usage_usec 7\n") == 7000


def test_missing_controllers_v2(tmp_path: Path) -> None:
    manager = tmp_path / "user.slice" / "user@1000.service"
    manager.mkdir(parents=True)
    (manager / "cgroup.controllers").write_text("cpu pids\n")
    layout, me = Layout(tmp_path, tmp_path, v2=True), os.getuid()
    assert missing_controllers(layout, "/user.slice/user@1000.service", me) == ["memory"]
    # a cgroup that is not the user's own is not delegated, whatever its parent enabled in it
    (manager / "cgroup.controllers").write_text("cpu memory pids\n")
    assert missing_controllers(layout, "/user.slice/user@1000.service", me) == []
    assert missing_controllers(layout, "/user.slice/user@1000.service", me + 1) == ["memory", "cpu"]


def test_proc_stat_cpu_ticks() -> None:
    stat = "4242 (python3 -c (x)) R 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 7 3 20 0 1 0 123 456 789"
    assert parse_proc_stat_cpu(stat) == 250 + 50 + 7 + 3


def test_v1_without_cpuacct_counts_the_processes(tmp_path: Path) -> None:
    unit = tmp_path / "memory" / "u.service"
    unit.mkdir(parents=True)
    (unit / "memory.usage_in_bytes").write_text("4096\n")
    (unit / "cgroup.procs").write_text(f"{os.getpid()}\n")
    sample = read_sample(Layout(tmp_path / "memory", tmp_path / "cpuacct", v2=False), "/u.service", CgroupFiles())
    assert sample is not None  # this very process, as the only one in the cgroup
    assert sample.cpu_ns == pytest.approx(sum(os.times()[:4]) * 1e9, abs=2e9 / CLOCK_TICKS)
