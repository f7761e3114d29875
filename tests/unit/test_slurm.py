"""babysit.executors.slurm.commands: its parsers on output recorded from a real Slurm 22.05 cluster
(tests/slurm/cluster.py), and its commands against stand-in executables that replay recorded answers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from babysit.core.protocol import State
from babysit.core.task import Host, Outcome, Task, Usage, derive_caps, spec_from_wire
from babysit.executors.slurm import commands as slurm
from babysit.executors.slurm.commands import Job, JobUsage, Node, Slurm, SlurmError
from babysit.executors.slurm.rounds import Rounds, Tracked

MiB = 1 << 20
US = slurm.SEP


def fields(*lines: str) -> str:
    """Recorded lines, written here with `|` where the commands printed the unit separator (\\x1f)."""
    return "".join(line.replace("|", US) + "\n" for line in lines)


# `squeue -h -t all -O SQUEUE_FORMAT` with SLURM_TIME_FORMAT=%s, recorded (tests/slurm/cluster.py): one job
# of each ending, and one running with a comment; its name and comment hold `|`, hence the separator.
SQUEUE_ALL = (
    fields(
        "4|CANCELLED|Resources|1796236823|1796236823|0|(null)|cancel-pending",  # scancel while pending
        "11|CANCELLED|None|1796236915|1796236916|15|(null)|kill-running",  # plain scancel while running
        "1|COMPLETED|None|1796236821|1796236821|0|(null)|cluster-probe",
        "5|COMPLETED|None|1796236909|1796236910|0|(null)|ok",
        "6|FAILED|NonZeroExitCode|1796236910|1796236911|1792|(null)|fail7",  # exit 7
        "8|FAILED|JobLaunchFailure|1796236912|1796236913|4021|(null)|launch-fail",  # --output=/nonexistent/...
        "9|FAILED|NonZeroExitCode|1796236913|1796236914|1280|(null)|term-trap",  # --full --signal=TERM, trap: exit 5
        "10|FAILED|JobLaunchFailure|1796236914|1796236915|15|(null)|term-plain",  # --full --signal=TERM, no trap
        "7|OUT_OF_MEMORY|OutOfMemory|1796236911|1796236912|253|(null)|oom",  # 400 MB with --mem=100M
        "2|TIMEOUT|TimeLimit|1796236822|1796236908|768|(null)|timeout-trap",  # --time=1, TERM trapped: exit 3
        "3|TIMEOUT|TimeLimit|1796236822|1796236908|15|(null)|timeout-plain",  # --time=1, TERM not trapped
    )
    + "12" + US + "RUNNING" + US + "None" + US + "1796236916" + US + "1796237516" + US + "0" + US
    + "babysit run #7 | with spaces" + US + 'odd | name "q" $x\n'
)
# Live states, recorded: a running job's EndTime is its time limit's; a pending one's StartTime may be a
# forecast (here N/A); COMPLETING after a plain scancel, before CANCELLED.
SQUEUE_LIVE = fields(
    "4|PENDING|Resources|N/A|N/A|0|(null)|cancel-pending",
    "2|RUNNING|None|1796236822|1796236882|0|(null)|timeout-trap",
)
# (recorded before the Comment column was asked for; "(null)" is what squeue prints for none)
SQUEUE_PENDING_FORECAST = fields("8|PENDING|Resources|1796235362|NONE|0|(null)|kill-plain")
SQUEUE_COMPLETING = fields("11|COMPLETING|None|1796236915|1796236916|0|(null)|kill-running")
# recorded with `tests/slurm/cluster.py --no-cgroups`: jobacct_gather/linux kills a job over its --mem itself
SQUEUE_OVER_MEMORY_WITHOUT_CGROUPS = fields("2|FAILED|JobLaunchFailure|1796236938|1796236939|9|(null)|over-mem")

# `sacct -X -n -P --delimiter=SEP -o SACCT_FIELDS`, recorded 6 s after the jobs above ended: "CANCELLED by
# UID"; quotes in names become backquotes; no comments (not stored by default); exit codes differ from
# squeue's for TIMEOUT and CANCELLED.
SACCT = fields(
    "2|TIMEOUT|0:0|None|1796236822|1796236908||timeout-trap",
    "3|TIMEOUT|0:0|None|1796236822|1796236908||timeout-plain",
    "4|CANCELLED by 0|0:0|None|None|1796236823||cancel-pending",
    "5|COMPLETED|0:0|None|1796236909|1796236910||ok",
    "6|FAILED|7:0|None|1796236910|1796236911||fail7",
    "7|OUT_OF_MEMORY|0:125|None|1796236911|1796236912||oom",
    "8|FAILED|0:53|None|1796236912|1796236913||launch-fail",
    "10|FAILED|0:15|None|1796236914|1796236915||term-plain",
    "11|CANCELLED by 0|0:0|None|1796236915|1796236916||kill-running",
) + "12" + US + "CANCELLED by 0" + US + "0:0" + US + "None" + US + "1796236916" + US + "1796236917" + US + US \
    + "odd | name `q` $x\n"
# ... and right after job 12 started: still PENDING, and named "allocation" for a few seconds
SACCT_JUST_STARTED = fields("12|PENDING|0:0|None|1796236916|Unknown||allocation")

# `sstat -j ID.batch -n -P --noconvert --format=MaxRSS,TresUsageInTot`, recorded on a hog that grows to
# 200 MiB and then frees it: TresUsageInTot's mem= falls back, MaxRSS stays at the peak.
SSTAT_GROWING = "9.batch|191660032|cpu=00:00:00,energy=0,fs/disk=64054,mem=191660032,pages=0,vmem=191680512\n"
SSTAT_FREED = "9.batch|212639744|cpu=00:00:00,energy=0,fs/disk=64054,mem=2842624,pages=0,vmem=2863104\n"
# ... and on a CPU burner, 6 s into its run
SSTAT_BURNING = "9.batch|2628599808|cpu=00:00:06,energy=0,fs/disk=4395,mem=2628599808,pages=2,vmem=2628952064\n"
# without --noconvert sizes come in K
SSTAT_CONVERTED = "9.batch|211868K|cpu=00:00:00,energy=0,fs/disk=4335,mem=6988K,pages=13,vmem=11412K\n"

# `sinfo -N -h -O SINFO_FORMAT`, recorded with one 1-CPU 50 MiB job running on the 2-CPU node
SINFO = "vm|mixed|1/1/0/2|21695|50|debug*\n"


def job(job_id: int, state: str, exit_code: int | None, signal: int | None, reason: str, start: float | None,
        end: float | None, name: str, comment: str = "") -> Job:
    return Job(job_id, state, exit_code, signal, reason, start, end, name, comment)


# --- parsers ------------------------------------------------------------------------------------


def test_squeue_reports_each_ending() -> None:
    jobs = slurm.parse_squeue(SQUEUE_ALL)
    assert jobs == {
        "4": job(4, "CANCELLED", 0, None, "Resources", 1796236823.0, 1796236823.0, "cancel-pending"),
        "11": job(11, "CANCELLED", None, 15, "", 1796236915.0, 1796236916.0, "kill-running"),
        "1": job(1, "COMPLETED", 0, None, "", 1796236821.0, 1796236821.0, "cluster-probe"),
        "5": job(5, "COMPLETED", 0, None, "", 1796236909.0, 1796236910.0, "ok"),
        "6": job(6, "FAILED", 7, None, "NonZeroExitCode", 1796236910.0, 1796236911.0, "fail7"),
        "8": job(8, "FAILED", None, 53, "JobLaunchFailure", 1796236912.0, 1796236913.0, "launch-fail"),
        "9": job(9, "FAILED", 5, None, "NonZeroExitCode", 1796236913.0, 1796236914.0, "term-trap"),
        "10": job(10, "FAILED", None, 15, "JobLaunchFailure", 1796236914.0, 1796236915.0, "term-plain"),
        "7": job(7, "OUT_OF_MEMORY", None, 125, "OutOfMemory", 1796236911.0, 1796236912.0, "oom"),
        "2": job(2, "TIMEOUT", 3, None, "TimeLimit", 1796236822.0, 1796236908.0, "timeout-trap"),
        "3": job(3, "TIMEOUT", None, 15, "TimeLimit", 1796236822.0, 1796236908.0, "timeout-plain"),
        "12": job(12, "RUNNING", None, None, "", 1796236916.0, None, 'odd | name "q" $x',
                "babysit run #7 | with spaces"),
    }
    assert [j.job_id for j in jobs.values() if not j.ended] == [12]


def test_squeue_over_memory_without_cgroups() -> None:
    over = slurm.parse_squeue(SQUEUE_OVER_MEMORY_WITHOUT_CGROUPS)["2"]
    assert (over.state, over.signal, over.reason) == ("FAILED", 9, "JobLaunchFailure")


def test_squeue_forecasts_are_not_times() -> None:
    live = slurm.parse_squeue(SQUEUE_LIVE)
    assert live["4"] == job(4, "PENDING", None, None, "Resources", None, None, "cancel-pending")
    assert live["2"] == job(2, "RUNNING", None, None, "", 1796236822.0, None, "timeout-trap")
    assert slurm.parse_squeue(SQUEUE_PENDING_FORECAST)["8"].start_time is None


def test_squeue_completing_has_ended_but_is_not_final() -> None:
    completing = slurm.parse_squeue(SQUEUE_COMPLETING)["11"]
    assert (completing.end_time, completing.ended, completing.exit_code) == (1796236916.0, False, 0)


def test_squeue_skips_what_is_not_a_plain_job() -> None:
    assert slurm.parse_squeue(fields("12_3|RUNNING|None|1|NONE|0|(null)|array", "12+1|RUNNING|None|1|NONE|0|(null)|het")
                              + "\n") == {}


# `squeue -h -r -t all -j 2 -O SQUEUE_FORMAT` and sacct on an array job, as the test cluster printed them
# (tests/slurm/cluster.py, Slurm 22.05; the times here in epoch seconds): `sbatch --array=1-5%2`, its tasks
# 1 to 3 done, 4 running under its own job id, 5 pending under the array's
SQUEUE_ARRAY = fields(
    "5|COMPLETED|None|1796238322|1796238326|0|babysit sweep x|2|3|babysit-s",
    "4|COMPLETED|None|1796238317|1796238321|0|babysit sweep x|2|2|babysit-s",
    "3|COMPLETED|None|1796238312|1796238316|0|babysit sweep x|2|1|babysit-s",
    "2|PENDING|Resources|N/A|N/A|0|babysit sweep x|2|5|babysit-s",
    "6|RUNNING|None|1796238327|1796238627|0|babysit sweep x|2|4|babysit-s",
    "1|COMPLETED|None|1796236821|1796236821|0|(null)|1|N/A|cluster-probe",
)
SACCT_ARRAY = fields(
    "3|COMPLETED|0:0|None|1796238312|1796238316||2_1|babysit-s",
    "6|RUNNING|0:0|None|1796238327|Unknown||2_4|babysit-s",
    "2|PENDING|0:0|None|Unknown|Unknown||2_[2-5%2]|babysit-s",
)


def test_an_arrays_tasks_are_known_by_array_and_index() -> None:
    jobs = slurm.parse_squeue(SQUEUE_ARRAY)
    assert sorted(jobs, key=slurm.key_order) == ["1", "2_1", "2_2", "2_3", "2_4", "2_5"]
    assert (jobs["2_4"].job_id, jobs["2_4"].state, jobs["2_5"].job_id, jobs["2_5"].state) == (6, "RUNNING", 2, "PENDING")
    assert jobs["2_3"].comment == "babysit sweep x" and jobs["1"].array_index is None
    assert slurm.parse_squeue(fields("2|PENDING|Resources|N/A|N/A|0|x|2|2-5%2|babysit-s")) == {}  # without -r
    accounted = slurm.parse_sacct(SACCT_ARRAY)
    assert sorted(accounted) == ["2_1", "2_4"] and accounted["2_4"].job_id == 6


def test_an_array_jobs_script_runs_the_command_of_each_index(tmp_path: Path) -> None:
    script = tmp_path / "batch"
    script.write_text(slurm.array_script({1: "echo one $BABYSIT_ARRAY_INDEX", 7: "echo 'seven' \"$X\""},
                                         {"BASH_FUNC_f%%": "() {  echo f;\n}"}))
    for index, said in (("1", "one 1"), ("7", "seven x")):
        ran = subprocess.run(["bash", str(script)], env={"SLURM_ARRAY_TASK_ID": index, "X": "x", "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True)
        assert (ran.returncode, ran.stdout.strip()) == (0, said), ran
    none = subprocess.run(["bash", str(script)], env={"SLURM_ARRAY_TASK_ID": "3"}, capture_output=True, text=True)
    assert none.returncode == 127 and "no command for array index 3" in none.stderr


def test_sacct_records() -> None:
    jobs = slurm.parse_sacct(SACCT)
    assert jobs["2"] == job(2, "TIMEOUT", 0, None, "", 1796236822.0, 1796236908.0, "timeout-trap")
    assert jobs["4"] == job(4, "CANCELLED", 0, None, "", None, 1796236823.0, "cancel-pending")
    assert jobs["6"] == job(6, "FAILED", 7, None, "", 1796236910.0, 1796236911.0, "fail7")
    assert jobs["7"] == job(7, "OUT_OF_MEMORY", None, 125, "", 1796236911.0, 1796236912.0, "oom")
    assert jobs["8"].signal == 53 and jobs["10"].signal == 15
    assert jobs["12"] == job(12, "CANCELLED", 0, None, "", 1796236916.0, 1796236917.0, "odd | name `q` $x")
    assert slurm.parse_sacct(SACCT_JUST_STARTED)["12"] == job(12, "PENDING", None, None, "", None, None, "allocation")


def test_sstat_current_and_peak_memory() -> None:
    assert slurm.parse_sstat(SSTAT_GROWING) == {9: JobUsage(191660032, 191660032, 0.0)}
    assert slurm.parse_sstat(SSTAT_FREED) == {9: JobUsage(2842624, 212639744, 0.0)}
    assert slurm.parse_sstat(SSTAT_BURNING) == {9: JobUsage(2628599808, 2628599808, 6.0)}
    assert slurm.parse_sstat(SSTAT_CONVERTED) == {9: JobUsage(6988 * 1024, 211868 * 1024, 0.0)}


def test_sstat_of_several_jobs_at_once() -> None:
    both = SSTAT_FREED + SSTAT_BURNING.replace("9.batch", "12.batch")
    assert slurm.parse_sstat(both) == {9: JobUsage(2842624, 212639744, 0.0), 12: JobUsage(2628599808, 2628599808, 6.0)}


def test_sstat_without_a_running_step() -> None:
    # before the job starts and after it ends sstat prints nothing on stdout (and exits 0)
    assert slurm.parse_sstat("") == {}
    # a gatherer that reports no TRES usage: the peak is the best live figure
    assert slurm.parse_sstat("9.batch|1032192|\n") == {9: JobUsage(1032192, 1032192, None)}
    assert slurm.parse_sstat("9.extern|1032192|\n") == {}  # another step than the task's own


@pytest.mark.parametrize("text, seconds", [
    ("00:00:06", 6.0), ("01:02:03", 3723.0), ("1-02:03:04", 93784.0), ("02:03.500", 123.5), ("7", 7.0),
    ("", None), ("UNLIMITED", None),
])
def test_durations(text: str, seconds: float | None) -> None:
    assert slurm.parse_duration(text) == seconds


@pytest.mark.parametrize("text, size", [
    ("2628599808", 2628599808), ("211868K", 211868 << 10), ("1.5G", 3 << 29), ("", None), ("N/A", None),
])
def test_sizes(text: str, size: int | None) -> None:
    assert slurm.parse_size(text) == size


def test_epochs() -> None:
    assert slurm.parse_epoch("1796235274") == 1796235274.0
    assert [slurm.parse_epoch(t) for t in ("Unknown", "N/A", "None", "NONE", "0", "")] == [None] * 6


def test_sinfo_nodes() -> None:
    vm = Node("vm", "mixed", cpus=2, idle_cpus=1, mem_bytes=21695 * MiB, free_mem_bytes=(21695 - 50) * MiB)
    assert slurm.parse_sinfo(SINFO, None) == [vm]
    assert slurm.parse_sinfo(SINFO, "debug") == [vm]
    assert slurm.parse_sinfo(SINFO, "gpu") == []


def test_sinfo_counts_each_usable_node_once() -> None:
    # constructed in the recorded format: nodes in two partitions, and nodes that cannot take jobs now
    output = (
        "a|idle|0/4/0/4|8000|0|debug*\n"
        "a|idle|0/4/0/4|8000|0|long\n"
        "b|allocated|4/0/0/4|8000|8000|debug*\n"
        "c|drained|0/0/4/4|8000|0|debug*\n"
        "d|idle*|0/4/0/4|8000|0|debug*\n"  # not responding
        "e|mixed|2/2/0/4|8000|1000|long\n"
    )
    assert [(n.name, n.idle_cpus, n.free_mem_bytes) for n in slurm.parse_sinfo(output, None)] == [
        ("a", 4, 8000 * MiB), ("b", 0, 0)]
    assert [(n.name, n.idle_cpus, n.free_mem_bytes) for n in slurm.parse_sinfo(output, "long")] == [
        ("a", 4, 8000 * MiB), ("e", 2, 7000 * MiB)]


def test_job_id() -> None:
    assert slurm.parse_job_id("19\n") == 19
    assert slurm.parse_job_id("12;cluster\n") == 12
    with pytest.raises(ValueError):
        slurm.parse_job_id("")


# --- what sbatch is given ----------------------------------------------------------------------

AWKWARD = [
    "echo hi",
    "printf '%s|' \"$FOO\" 'it''s' \"a\\$b\"; echo; echo line2 >&2\ncat <<'X'\n$HOME `x` \\n\nX\nexit 0",
    "echo 'single' \"double\" $'ansi' \\",
    "echo dos\r\necho line\x01 tab\t del\x7f done",
    "#SBATCH --mem=1\necho not an option",
    "",
]


@pytest.mark.parametrize("command", AWKWARD)
def test_bash_literal_is_one_word_of_the_same_text(command: str) -> None:
    out = subprocess.run(["bash", "-c", f"printf %s {slurm.bash_literal(command)}"], capture_output=True).stdout
    assert out.decode() == command


@pytest.mark.parametrize("command", AWKWARD)
def test_batch_script_runs_the_command_with_bash_c(tmp_path: Path, command: str) -> None:
    script = slurm.batch_script(command)
    assert "\r" not in script  # sbatch refuses scripts with DOS line breaks
    assert script.splitlines()[1].startswith("exec /bin/bash -c ")  # sbatch reads #SBATCH lines before it only
    (tmp_path / "job").write_text(script)
    env = {"PATH": os.environ["PATH"], "FOO": "bar $x 'q'", "HOME": "/h"}
    ran = subprocess.run(["bash", str(tmp_path / "job")], capture_output=True, env=env)
    direct = subprocess.run(["bash", "-c", command], capture_output=True, env=env)
    assert (ran.returncode, ran.stdout, ran.stderr) == (direct.returncode, direct.stdout, direct.stderr)


def test_batch_script_hands_the_callers_exported_functions_to_bash(tmp_path: Path) -> None:
    functions = {"BASH_FUNC_greet%%": "() {  echo \"hi $1 'q'\"\n}", "BASH_FUNC_ml%%": "() {  greet ml\n}"}
    (tmp_path / "job").write_text(slurm.batch_script("greet you; bash -c ml", functions))
    ran = subprocess.run(["bash", str(tmp_path / "job")], capture_output=True, text=True, env={"PATH": os.defpath})
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "hi you 'q'\nhi ml 'q'\n", "")


def test_sbatch_args() -> None:
    args = slurm.sbatch_args(name="t", cwd="/w", mem_bytes=100 * MiB + 1, cpus=2, time_limit_s=61, output="/w/o",
                             partition="long", account="lab")
    assert args == ["--parsable", "--job-name=t", "--chdir=/w", "--output=/w/o", "--nodes=1", "--ntasks=1",
                    "--cpus-per-task=2", "--mem=101M", "--no-requeue", "--time=2", "--partition=long",
                    "--account=lab"]
    with_gpus = slurm.sbatch_args(name="t", cwd="/w", mem_bytes=MiB, cpus=1, time_limit_s=None, output="/o",
                                  partition=None, account=None, gpus=2)
    assert with_gpus[-1] == "--gres=gpu:2"  # Slurm's gres: the cluster picks, fences and names the devices


@pytest.mark.parametrize("limit, option", [(1, "--time=1"), (30, "--time=1"), (60, "--time=1"), (60.5, "--time=2"),
                                           (None, None), (float("inf"), None)])
def test_time_limit_in_whole_minutes(limit: float | None, option: str | None) -> None:
    args = slurm.sbatch_args(name="t", cwd="/", mem_bytes=1, cpus=0, time_limit_s=limit, output="/o",
                             partition=None, account=None)
    assert [a for a in args if a.startswith("--time")] == ([option] if option else [])
    assert "--mem=1M" in args and "--cpus-per-task=1" in args


@pytest.mark.parametrize("name, comment", [("a\nb", None), ("a", "x\ry"), ("a" + US, None)])
def test_job_names_and_comments_are_one_line(name: str, comment: str | None) -> None:
    with pytest.raises(ValueError):
        slurm.sbatch_args(name=name, cwd="/", mem_bytes=1, cpus=1, time_limit_s=None, output="/o",
                          partition=None, account=None, comment=comment)


def test_job_environment_is_the_tasks_plus_the_cluster() -> None:
    task = {"FOO": "1", "SBATCH_PARTITION": "nope", "SLURM_JOB_ID": "7", "SLURM_CONF": "/theirs"}
    ours = {"SLURM_CONF": "/c/slurm.conf", "PATH": "/usr/bin", "SECRET": "x", "SLURM_TIME_FORMAT": "%s"}
    assert slurm.job_environment(task, ours) == {"FOO": "1", "SLURM_CONF": "/c/slurm.conf", "PATH": "/usr/bin"}
    assert slurm.job_environment({"PATH": "/task"}, ours)["PATH"] == "/task"


# --- the commands, against stand-ins that replay recorded answers -------------------------------


def stand_in(bin_dir: Path, name: str, stdout: str = "", stderr: str = "", status: int = 0, delay: float = 0) -> None:
    """An executable `name` that logs its argv, stdin and environment, then answers as recorded (or hangs)."""
    (bin_dir / f"{name}.stdout").write_text(stdout)
    (bin_dir / f"{name}.stderr").write_text(stderr)
    # absolute paths: the PATH it runs with may be a task's
    answer = (f'/bin/cat "{bin_dir}/{name}.stdout"; /bin/cat "{bin_dir}/{name}.stderr" >&2\nexit {status}\n'
              if not delay else f"exec /bin/sleep {delay}\n")  # exec: killing it leaves no child behind
    script = bin_dir / name
    script.write_text(
        "#!/bin/bash\n"
        f'printf "%s\\n" "$*" >> "{bin_dir}/calls"\n'
        f'/bin/cat > "{bin_dir}/{name}.stdin"\n'
        f'/usr/bin/env > "{bin_dir}/{name}.env"\n'
        + answer
    )
    script.chmod(0o755)


def calls(bin_dir: Path) -> list[str]:
    path = bin_dir / "calls"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    return tmp_path


def client(bin_dir: Path, **kwargs: float) -> Slurm:
    return Slurm({"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_CONF": "/c/slurm.conf"}, **kwargs)


@pytest.mark.asyncio
async def test_jobs_asks_sacct_only_for_the_ids_squeue_forgot(bin_dir: Path) -> None:
    remembered = "".join(line + "\n" for line in SQUEUE_ALL.split("\n") if line.split(US)[0] in ("6", "12"))
    stand_in(bin_dir, "squeue", remembered)
    stand_in(bin_dir, "sacct", SACCT)
    jobs = await client(bin_dir).jobs(["12", "6", "2", "999"])
    assert sorted(jobs, key=slurm.key_order) == ["2", "6", "12"]
    assert (jobs["2"].state, jobs["6"].exit_code, jobs["12"].comment) == ("TIMEOUT", 7, "babysit run #7 | with spaces")
    assert calls(bin_dir) == [f"-h -r -t all -j 2,6,12,999 -O {slurm.SQUEUE_FORMAT}",
                              f"-X -n -P --delimiter={US} -j 2,999 -o {slurm.SACCT_FIELDS}"]
    assert "SLURM_TIME_FORMAT=%s" in (bin_dir / "squeue.env").read_text().splitlines()


@pytest.mark.asyncio
async def test_jobs_unknown_everywhere_are_absent(bin_dir: Path) -> None:
    stand_in(bin_dir, "squeue", stderr="slurm_load_jobs error: Invalid job id specified\n", status=1)
    stand_in(bin_dir, "sacct", stderr="Slurm accounting storage is disabled\n", status=1)
    assert await client(bin_dir).jobs(["5"]) == {}
    assert await client(bin_dir).jobs([]) == {}
    assert len(calls(bin_dir)) == 2  # no ids, no commands


@pytest.mark.asyncio
async def test_an_unreachable_controller_is_an_error(bin_dir: Path) -> None:
    stand_in(bin_dir, "squeue", stderr="slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
             status=1)
    with pytest.raises(SlurmError) as raised:
        await client(bin_dir).jobs(["5"])
    assert "Unable to contact slurm controller" in raised.value.stderr and raised.value.returncode == 1


@pytest.mark.asyncio
async def test_a_command_that_hangs_is_an_error(bin_dir: Path) -> None:
    stand_in(bin_dir, "sinfo", SINFO, delay=5)
    with pytest.raises(SlurmError, match="no answer"):
        await client(bin_dir, timeout=0.3).free(None)


@pytest.mark.asyncio
async def test_submit_gives_the_script_on_stdin_and_the_tasks_environment(bin_dir: Path) -> None:
    stand_in(bin_dir, "sbatch", "42\n")
    job_id = await client(bin_dir).submit(
        name="train", command="echo \"$FOO\"", cwd="/w", env={"FOO": "a b", "PATH": "/p"}, mem_bytes=MiB,
        cpus=1, time_limit_s=None, output="/w/out", partition=None, account=None, comment="babysit run #3")
    assert job_id == 42
    assert calls(bin_dir) == ["--parsable --job-name=train --chdir=/w --output=/w/out --nodes=1 --ntasks=1 "
                              "--cpus-per-task=1 --mem=1M --no-requeue --comment=babysit run #3"]
    assert (bin_dir / "sbatch.stdin").read_text() == "#!/bin/bash\nexec /bin/bash -c 'echo \"$FOO\"'\n"
    env = dict(line.split("=", 1) for line in (bin_dir / "sbatch.env").read_text().splitlines())
    assert (env["FOO"], env["PATH"], env["SLURM_CONF"]) == ("a b", "/p", "/c/slurm.conf")
    assert "SLURM_TIME_FORMAT" not in env


@pytest.mark.asyncio
async def test_cancel(bin_dir: Path) -> None:
    stand_in(bin_dir, "scancel")
    await client(bin_dir).cancel("42")
    await client(bin_dir).cancel("42", "KILL")
    await client(bin_dir).cancel("42", "SIGINT")
    assert calls(bin_dir) == ["--full --signal=TERM 42", "42", "--full --signal=SIGINT 42"]


@pytest.mark.asyncio
async def test_cancelling_a_job_that_is_gone_is_no_error(bin_dir: Path) -> None:
    # recorded: `scancel --full --signal=TERM` on an ended or unknown job
    stand_in(bin_dir, "scancel", stderr="scancel: error: Kill job error on job id 1: Invalid job id specified\n",
             status=1)
    await client(bin_dir).cancel("1")


@pytest.mark.asyncio
async def test_usages_of_every_running_job_in_one_call(bin_dir: Path) -> None:
    stand_in(bin_dir, "sstat", SSTAT_FREED, stderr="sstat: error: couldn't get steps for job 13\n")
    assert await client(bin_dir).usages([13, 9]) == {9: JobUsage(2842624, 212639744, 0.0)}
    assert calls(bin_dir) == [f"-j 9.batch,13.batch -n -P --noconvert --format={slurm.SSTAT_FIELDS}"]
    # recorded: before the start and after the end, stderr only, and status 0
    stand_in(bin_dir, "sstat", stderr="sstat: error: StepId=9.batch not found running.\n")
    assert await client(bin_dir).usages([9]) == {}
    assert await client(bin_dir).usages([]) == {}


@pytest.mark.parametrize(("returncode", "stderr", "unreachable"), [
    # recorded with slurmctld stopped: each command tries for ~9 s, then says so
    (1, "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n", True),
    (1, "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)\n", True),
    (None, "no answer within 60s", True),
    (1, "sbatch: error: Batch job submission failed: Invalid partition name specified\n", False),
])
def test_an_outage_is_told_apart_from_a_refusal(returncode: int | None, stderr: str, unreachable: bool) -> None:
    assert slurm.SlurmError.of(["sbatch"], returncode, stderr).unreachable is unreachable


@pytest.mark.asyncio
async def test_by_name_is_exact_and_live(bin_dir: Path) -> None:
    stand_in(bin_dir, "squeue", SQUEUE_ALL + fields("26|PENDING|Priority|N/A|N/A|0|(null)|ok",
                                                    "27|RUNNING|None|1796236950|NONE|0|(null)|ok-2"))
    found = await client(bin_dir).by_name("ok")  # job 5, "ok", has ended
    assert [(j.job_id, j.state) for j in found] == [(26, "PENDING")]
    found = await client(bin_dir).by_name_prefix("o")
    assert [(j.job_id, j.name) for j in found] == [(12, 'odd | name "q" $x'), (26, "ok"), (27, "ok-2")]
    assert calls(bin_dir) == [f"-h -r --me -O {slurm.SQUEUE_FORMAT}"] * 2


@pytest.mark.asyncio
async def test_nodes_and_free(bin_dir: Path) -> None:
    stand_in(bin_dir, "sinfo", SINFO)
    assert [n.name for n in await client(bin_dir).nodes("debug")] == ["vm"]
    assert await client(bin_dir).free("debug") == ((21695 - 50) * MiB, 1.0)
    assert calls(bin_dir) == [f"-N -h -O {slurm.SINFO_FORMAT}"] * 2


def test_slurm_error_of_a_command_or_of_a_cluster() -> None:
    of_command = SlurmError.of(["sbatch", "--wrap=x y"], 1, "sbatch: error: Invalid account\n")
    assert str(of_command) == "sbatch '--wrap=x y' failed (1): sbatch: error: Invalid account"
    assert (of_command.argv, of_command.returncode) == (["sbatch", "--wrap=x y"], 1)
    assert str(SlurmError("no node can run jobs")) == "no node can run jobs"


class Daemon:
    """What a round reports to: the runs' records, and the starts it saw."""

    def __init__(self, tasks: dict[int, Task]) -> None:
        self.tasks, self.starts = tasks, []

    def task(self, task_id: int) -> Task | None:
        return self.tasks.get(task_id)

    def running(self) -> list[Task]:
        return list(self.tasks.values())

    def started(self, task_id: int, at: float, gpus: tuple[str, ...] = ()) -> None:
        self.starts.append(task_id)

    def sample_now(self, task_id: int) -> None:
        pass

    async def ended(self, task_id: int, outcome: Outcome, usage: Usage) -> None:
        raise AssertionError("no job ended")


@pytest.mark.asyncio
async def test_a_round_asks_once_for_every_job(bin_dir: Path) -> None:
    """Seen in review: each tick ran sstat once per running job."""
    ids = (21, 22, 23)
    stand_in(bin_dir, "squeue", fields(*(f"{i}|RUNNING|None|1796236916|1796237516|0|(null)|babysit-t{i}"
                                         for i in ids)))
    stand_in(bin_dir, "sstat", "".join(SSTAT_FREED.replace("9.batch", f"{i}.batch") for i in ids))
    host = Host(mem_bytes=8 << 30, cores=2.0)
    tasks = {}
    for i in ids:
        spec = spec_from_wire({"name": f"t{i}", "command": "true"}, host)
        tasks[i] = Task(i, spec, derive_caps(spec, host), State.QUEUED, 0.0)
    jobs = {i: Tracked(i, i, bin_dir / f"{i}.out") for i in ids}
    rounds = Rounds(client(bin_dir), jobs)
    rounds.events = daemon = Daemon(tasks)
    await rounds.look()
    assert [call.split()[0] for call in calls(bin_dir)] == ["-h", "-j"]  # one squeue, then one sstat
    assert calls(bin_dir)[1].startswith("-j 21.batch,22.batch,23.batch ")
    assert daemon.starts == list(ids)
    assert all(jobs[i].usage == JobUsage(2842624, 212639744, 0.0) for i in ids)


def test_the_gpus_a_job_got_are_read_from_scontrol() -> None:
    detail = ("JobId=12 JobName=babysit-t\n   Nodes=n1 CPU_IDs=0-1 Mem=100 GRES=gpu:2(IDX:0,2-3)\n"
              "   Nodes=n2 CPU_IDs=0 Mem=100 GRES=gpu:a100:1(IDX:5)\n   TresPerNode=gres:gpu:2\n")
    assert slurm.parse_gpu_indices(detail) == ("0", "2", "3", "5")
    assert slurm.parse_gpu_indices("JobId=13\n   Nodes=n1 CPU_IDs=0 Mem=100 GRES=\n") == ()
