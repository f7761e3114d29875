import pytest

from babysit.core.protocol import ExceedsCap, InvalidArgument, State
from babysit.core.task import GiB, Host, Task, derive_caps, spec_from_wire, spec_to_wire, split_env, unusable_env_names

SMALL = Host(mem_bytes=8 * GiB, cores=2)


def spec(**fields: object):  # noqa: ANN201
    return spec_from_wire({"name": "job", "command": "true", **fields}, SMALL)


def test_defaults_pass_the_caps_of_a_small_host() -> None:
    s = spec()
    assert s.estimates.time_s == 600 and s.estimates.kill_timeout_s == 1200
    assert s.estimates.observability_interval_s == 300
    assert s.estimates.mem_bytes == int(0.4 * 8 * GiB)  # 4 GiB would be above the 40% cap
    assert s.estimates.cpu_cores == pytest.approx(1.8)  # 4 cores would be above 90% of 2
    derive_caps(s, SMALL)  # does not raise


def test_kill_timeout_follows_the_time_estimate() -> None:
    assert spec(estimated_time="1h").estimates.kill_timeout_s == 7200
    assert spec(estimated_time="1h", kill_timeout="90m").estimates.kill_timeout_s == 5400


def test_caps() -> None:
    caps = derive_caps(spec(estimated_mem_bytes="1G", estimated_cpu_cores=1, estimated_time="10m"), SMALL)
    assert caps.memory_max_bytes == 3 * GiB
    assert caps.cpu_quota_pct == pytest.approx(180)
    assert caps.runtime_max_s == 2 * 1200 + 60
    capped = derive_caps(spec(estimated_mem_bytes="3G"), SMALL)
    assert capped.memory_max_bytes == int(0.4 * 8 * GiB)  # 3x would pass the per-task cap


@pytest.mark.parametrize("fields, message", [
    ({"estimated_mem_bytes": "4G"}, "per-task cap"),
    ({"estimated_cpu_cores": 2}, "per-task cap"),
])
def test_estimates_above_their_cap_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ExceedsCap, match=message):
        derive_caps(spec(**fields), SMALL)


@pytest.mark.parametrize("wire", [
    {"name": "job"},
    {"name": "job", "command": "  "},
    {"name": "job", "command": "true", "cwd": "relative/dir"},
    {"name": "job", "command": "true", "env": {"PATH": 7}},
    {"name": "job", "command": "true", "sudo": True},
    {"name": "job", "command": "true", "estimated_cpu_cores": "many"},
    {"name": "job", "command": "true", "estimated_cpu_cores": 0},
    {"name": "job", "command": "true", "mem_pct_limit": 101},
    {"name": "job", "command": "true", "estimated_time": True},
    {"name": 5, "command": "true"},
    {"name": "a" * 65, "command": "true"},
    {"name": "job", "command": "true", "request_id": "../x"},
    {"name": "job", "command": "true", "request_id": "r" * 65},
    {"name": "job", "command": "true", "request_id": 7},
])
def test_bad_specs(wire: dict) -> None:
    with pytest.raises(InvalidArgument):
        spec_from_wire(wire, SMALL)


def test_exported_functions_are_kept_and_names_no_task_can_take_are_dropped() -> None:
    function = "() {  module load gcc\n}"
    s = spec(env={"PATH": "/usr/bin", "BASH_FUNC_ml%%": function, "BAD NAME": "x", "BASH_FUNC_x%%": "not a function",
                  "A=B": "c"})
    assert dict(s.env) == {"PATH": "/usr/bin", "BASH_FUNC_ml%%": function}
    assert split_env(s.env) == ({"PATH": "/usr/bin"}, {"BASH_FUNC_ml%%": function})
    assert unusable_env_names({"BAD NAME": "x", "BASH_FUNC_x%%": "oops", "OK": "1"}) == ["BAD NAME", "BASH_FUNC_x%%"]


def test_environment_drops_systemd_variables() -> None:
    s = spec(env={"PATH": "/usr/bin", "INVOCATION_ID": "x", "NOTIFY_SOCKET": "/run/x"})
    assert dict(s.env) == {"PATH": "/usr/bin"}


def test_wire_round_trip() -> None:
    s = spec(estimated_mem_bytes="1G", estimated_time="2h", cwd="/tmp")
    assert spec_from_wire(spec_to_wire(s), SMALL) == s


def test_task_output_is_line_buffered_unless_asked_not_to() -> None:
    from babysit.core.task import Buffering
    from babysit.executors.systemd.unit import exec_start, unit_command

    line = spec(command="echo $HOME")
    plain = spec(command="echo $HOME", buffering="default")
    assert line.buffering == Buffering.LINE and plain.buffering == Buffering.DEFAULT
    assert exec_start(line, "/usr/bin/stdbuf") == ("/usr/bin/stdbuf", ["/usr/bin/stdbuf", "-oL", "/bin/bash", "-c",
                                                                       "echo $$HOME"], False)
    assert exec_start(plain, "/usr/bin/stdbuf") == ("/bin/bash", ["/bin/bash", "-c", "echo $$HOME"], False)
    assert exec_start(line, None)[0] == "/bin/bash"  # no stdbuf on this host: as before (ping warns)
    assert unit_command(exec_start(line, "/usr/bin/stdbuf")[1]) == unit_command(exec_start(plain, None)[1]) == "echo $HOME"
    with pytest.raises(InvalidArgument, match="buffering must be one of line, default"):
        spec(buffering="full")


def test_exported_functions_reach_bash_through_env_and_read_back_from_the_unit() -> None:
    from babysit.executors.systemd.unit import Described, exec_start, spec_of_unit, start_properties

    function = "() {  echo $1\n}"
    s = spec(command="greet $HOME", env={"P": "1", "BASH_FUNC_greet%%": function})
    path, argv, _ = exec_start(s, "/usr/bin/stdbuf")
    assert argv == ["/usr/bin/stdbuf", "-oL", "/usr/bin/env", "BASH_FUNC_greet%%=() {  echo $$1\n}", "/bin/bash",
                    "-c", "greet $$HOME"]
    assert exec_start(s, None)[0] == "/usr/bin/env"
    task = Task(1, s, derive_caps(s, SMALL), State.QUEUED, 0.0)
    props = start_properties(task, 10, ("/bin/true", ["/bin/true"], True), None)
    assert props["Environment"] == ["P=1"]  # no unit takes the function's name
    back = spec_of_unit(Described(s.name, 1, {}), {"ExecStart": props["ExecStart"], "Environment": ["P=1"]}, SMALL)
    assert (back.command, dict(back.env)) == ("greet $HOME", dict(s.env))


def test_a_task_carries_a_bounded_command_and_environment() -> None:
    from babysit.core.task import MAX_COMMAND_BYTES, MAX_ENV_BYTES

    host = Host(mem_bytes=8 * GiB, cores=4.0)
    spec_from_wire({"name": "a", "command": "x" * MAX_COMMAND_BYTES, "env": {"V": "v" * (MAX_ENV_BYTES - 3)}}, host)
    with pytest.raises(InvalidArgument, match="put the script in a file"):
        spec_from_wire({"name": "a", "command": "x" * (MAX_COMMAND_BYTES + 1)}, host)
    with pytest.raises(InvalidArgument, match="largest variables: BIG, V"):
        spec_from_wire({"name": "a", "command": "true", "env": {"V": "v" * 100, "BIG": "b" * MAX_ENV_BYTES}}, host)
