"""Random input, from the CLI and over D-Bus: babysitd never dies, every refusal is one of babysit's clear
errors, and no unit is created for a request that was refused."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from babysit.core.protocol import BUS_NAME, ERRORS, SCHEDULER_INTERFACE, SCHEDULER_PATH
from babysit.core.task import SPEC_FIELDS
from tests.integration.conftest import babysit, babysit_units

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("daemon")]
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)

odd_text = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=80) | st.sampled_from(
    ["", " ", "../x", "a b", "x;rm", "é", "-1", "0", "1e400", "nan", "inf", "99999999999T", "1s", "10m", "2G",
     "/", "~", "$(id)", "`id`", "a" * 65, "\n"])
variants = st.one_of(
    odd_text.map(lambda v: Variant("s", v)),
    st.integers(-(1 << 63), (1 << 63) - 1).map(lambda v: Variant("x", v)),
    st.integers(0, (1 << 64) - 1).map(lambda v: Variant("t", v)),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: Variant("d", v)),
    st.booleans().map(lambda v: Variant("b", v)),
    st.lists(odd_text, max_size=3).map(lambda v: Variant("as", v)),
    st.dictionaries(odd_text, odd_text, max_size=3).map(lambda v: Variant("a{ss}", v)),
)
keys = st.sampled_from(sorted(SPEC_FIELDS)) | odd_text
# commands are comments: whatever the fuzzer makes of the rest, nothing it submits does anything
specs = st.dictionaries(keys, variants, max_size=8).flatmap(lambda spec: st.sampled_from([
    spec, {**spec, "command": Variant("s", "# fuzz")}, {**spec, "name": Variant("s", f"fuzz-{uuid.uuid4().hex[:8]}"),
                                                        "command": Variant("s", "# fuzz")}]))


async def call(member: str, signature: str, body: list[Any]) -> Message:
    bus = await MessageBus(bus_type=BusType.SESSION).connect()
    try:
        return await asyncio.wait_for(bus.call(Message(
            destination=BUS_NAME, path=SCHEDULER_PATH, interface=SCHEDULER_INTERFACE, member=member,
            signature=signature, body=body)), 30)
    finally:
        bus.disconnect()


def check_reply(reply: Message, name: Any, units_before: set[str]) -> None:
    """Accepted, or refused with one of babysit's errors and no unit made; the daemon still answers."""
    if reply.message_type == MessageType.ERROR:
        assert reply.error_name in ERRORS, (reply.error_name, reply.body)
        assert reply.body and reply.body[0].strip(), "an error without a message"
        assert babysit_units() - units_before == set(), "a refused request created a unit"
    else:
        assert isinstance(name, Variant) and reply.body == [name.value]
        asyncio.run(call("Kill", "s", [name.value]))  # a queued one would start later, among other examples
    pong = asyncio.run(call("Ping", "", []))
    assert pong.message_type == MessageType.METHOD_RETURN, "babysitd stopped answering"


@settings(FUZZ, max_examples=150)
@given(spec=specs, force=st.booleans())
def test_random_run_specs_over_dbus(spec: dict[str, Variant], force: bool) -> None:
    before = babysit_units()
    reply = asyncio.run(call("Run", "a{sv}b", [spec, force]))
    check_reply(reply, spec.get("name"), before)


@settings(FUZZ, max_examples=80)
@given(changes=st.dictionaries(keys, variants, max_size=6), target=odd_text)
def test_random_adjusts_over_dbus(changes: dict[str, Variant], target: str) -> None:
    before = babysit_units()
    reply = asyncio.run(call("Adjust", "sa{sv}", [target, changes]))
    assert reply.message_type == MessageType.ERROR or target  # an empty name is never adjusted
    if reply.message_type == MessageType.ERROR:
        check_reply(reply, None, before)


cli_values = st.sampled_from(["", "x", "-1", "0", "1e9", "abc", "10s", "1h", "2G", "50%", "../x", "a b", "é",
                              "99999999999999999999"]) | st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=12)
cli_flags = st.sampled_from(["--name", "--estimated_time", "--estimated_mem_bytes", "--estimated_cpu_cores",
                             "--kill_timeout", "--observability_interval", "--mem_pct_limit", "--cpu_pct_limit",
                             "--bogus", "--force", "--json", "--tail"])
cli_args = st.lists(st.tuples(cli_flags, cli_values).map(lambda fv: f"{fv[0]}={fv[1]}"), max_size=4)


@settings(FUZZ, max_examples=25)
@given(verb=st.sampled_from(["run", "adjust", "status", "kill", "wait_for_capacity", "log"]), args=cli_args)
def test_random_cli_arguments(verb: str, args: list[str]) -> None:
    extra = ["--command=# fuzz"] if verb == "run" else []
    extra += ["--timeout=1"] if verb == "wait_for_capacity" else []
    done = babysit(verb, *extra, *args, timeout=60)
    assert done.returncode in (0, 1, 2), (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    if done.returncode == 2:
        assert done.stderr.strip(), "a refusal without a message"
    assert babysit("ping").returncode == 0, "babysitd stopped answering"


@pytest.mark.parametrize("field, value", [("command", "rm -rf ~"), ("env", Variant("a{ss}", {"A": "b"})),
                                          ("cwd", "/nonexistent"), ("request_id", "again"), ("buffering", "default")])
def test_adjust_takes_only_the_estimates_and_limits(task_name: str, field: str, value: Any) -> None:
    """Seen in review: Adjust took every Run field (and skipped the cwd check), so the stored record could
    say another command than the one running."""
    assert babysit("run", f"--name={task_name}", "--command=exec sleep 60").returncode == 0
    try:
        change = value if isinstance(value, Variant) else Variant("s", value)
        reply = asyncio.run(call("Adjust", "sa{sv}", [task_name, {field: change}]))
        assert reply.error_name == "org.babysit.Error.InvalidArgument", reply.body
        assert f"not {field}" in reply.body[0]
        shown = babysit("status", f"--name={task_name}", "--json").stdout
        assert '"command": "exec sleep 60"' in shown
        assert babysit("adjust", f"--name={task_name}", "--estimated_time=5m").returncode == 0  # what it documents
    finally:
        babysit("kill", f"--name={task_name}")
