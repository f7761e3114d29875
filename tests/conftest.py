"""Test tiers: pure tests run anywhere; `integration` needs a user session; `host` needs root outside one."""

from __future__ import annotations

import os

import pytest

from tests.session.run import own_session_is_up

SESSION_REQUIRED = os.environ.get("BABYSIT_REQUIRE_SESSION") == "1"
SESSION_UP = own_session_is_up(dict(os.environ))
RUN_HINT = "run the suite through the session runner: python3 tests/session/run.py .venv/bin/pytest"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SESSION_REQUIRED and not SESSION_UP:  # the runner promised a session: its absence is a failure
        raise pytest.UsageError("BABYSIT_REQUIRE_SESSION=1 but no user session is reachable")
    for item in items:
        if "integration" in item.keywords and not SESSION_UP:
            item.add_marker(pytest.mark.skip(reason=f"no systemd user session; {RUN_HINT}"))
        if "host" in item.keywords and (os.geteuid() != 0 or SESSION_REQUIRED):
            item.add_marker(pytest.mark.skip(reason="tests the session runner itself: needs root, outside a session"))
