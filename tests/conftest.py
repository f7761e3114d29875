"""Test tiers: pure tests run anywhere; `integration` only through the session runner; `host` needs root outside one."""

from __future__ import annotations

import os

import pytest

from tests.session.run import own_session_is_up

# The runner sets this for COMMAND: it built a private session, or checked that the caller's own
# holds no babysit of theirs and will remove what the tests install. Without it, integration tests
# would install into, and share, the caller's own babysit.
SESSION_REQUIRED = os.environ.get("BABYSIT_REQUIRE_SESSION") == "1"
SESSION_UP = own_session_is_up(dict(os.environ))
# the Slurm tier's runner (tests/slurm/cluster.py) started a cluster and says where its config is
SLURM_REQUIRED = os.environ.get("BABYSIT_REQUIRE_SLURM") == "1"
SLURM_UP = bool(os.environ.get("SLURM_CONF"))
IN_GUEST = os.environ.get("BABYSIT_VM_GUEST") == "1"  # set by tests/vm/guest.sh inside the VM tier's guest
CLAUDE = os.environ.get("BABYSIT_CLAUDE", "")  # Claude Code's CLI, for the plugin tier (.ci/run installs it)
NOT_THROUGH_RUNNER = ("integration tests run only through the session runner: "
                      "python3 tests/session/run.py .venv/bin/pytest")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SESSION_REQUIRED and not SESSION_UP:  # the runner promised a session: its absence is a failure
        raise pytest.UsageError("BABYSIT_REQUIRE_SESSION=1 but no user session is reachable")
    if SLURM_REQUIRED and not SLURM_UP:
        raise pytest.UsageError("BABYSIT_REQUIRE_SLURM=1 but SLURM_CONF did not reach the tests")
    for item in items:
        if "integration" in item.keywords and not SESSION_REQUIRED:
            item.add_marker(pytest.mark.skip(reason=NOT_THROUGH_RUNNER))
        if "slurm" in item.keywords and not SLURM_UP:
            item.add_marker(pytest.mark.skip(reason="runs on a real Slurm cluster: python3 tests/slurm/cluster.py -- "
                                                    "python3 tests/session/run.py .venv/bin/pytest -m slurm"))
        if "vm" in item.keywords and not IN_GUEST:
            item.add_marker(pytest.mark.skip(reason="runs inside the VM tier's guest: python3 tests/vm/run.py"))
        if "plugin" in item.keywords and not CLAUDE:
            item.add_marker(pytest.mark.skip(reason="runs Claude Code's own CLI: BABYSIT_CLAUDE=path/to/claude "
                                                    ".venv/bin/pytest -m plugin"))
        if "host" in item.keywords and (os.geteuid() != 0 or SESSION_REQUIRED):
            item.add_marker(pytest.mark.skip(reason="tests the session runner itself: needs root, outside a session"))


TIER_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add up the time each tier takes (setup, call and teardown), for the summary below."""
    tier = next((t for t in ("slurm", "integration", "host", "vm", "plugin") if t in report.keywords), "pure")
    if not report.skipped:
        TIER_SECONDS[tier] = TIER_SECONDS.get(tier, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIER_SECONDS:
        figures = ", ".join(f"{tier} {seconds:.1f} s" for tier, seconds in sorted(TIER_SECONDS.items())
                            if seconds >= 0.05)  # a tier that was only skipped here
        terminalreporter.write_line(f"time per tier: {figures}")
