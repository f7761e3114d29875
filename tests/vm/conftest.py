"""The VM tier runs inside the guest only (tests/vm/run.py boots it); each boot runs its own phase.

Phase `main` runs every test not marked `after_reboot`, those marked `before_reboot` last (they leave
tasks running into the shutdown); phase `after_reboot`, on the next boot, runs only those marked so.
"""

from __future__ import annotations

import os

import pytest

from tests.integration.conftest import daemon, figure, gate, task_name

__all__ = ["daemon", "figure", "gate", "task_name"]  # the session tier's fixtures, shared with this tier
PHASE = os.environ.get("BABYSIT_VM_PHASE", "main")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    other_phase = [item for item in items
                   if "vm" in item.keywords and ("after_reboot" in item.keywords) != (PHASE == "after_reboot")]
    if other_phase:
        config.hook.pytest_deselected(items=other_phase)
        items[:] = [item for item in items if item not in other_phase]
    items.sort(key=lambda item: "before_reboot" in item.keywords)  # stable: file order otherwise
