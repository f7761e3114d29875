"""The one command for a newcomer's tests: what it says when the machine lacks a package."""

from __future__ import annotations

import sys

import pytest

from tests import suite


def test_a_missing_tool_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(suite, "NEEDED", {**suite.NEEDED, "babysit-no-such-tool": "babysit-no-such-package",
                                          "/nonexistent/header.h": "libnothing-dev"})
    monkeypatch.setattr(suite, "prepare", lambda python: pytest.fail("nothing is prepared when packages lack"))
    assert suite.main([]) == suite.EXIT_USAGE
    said = capsys.readouterr().err
    assert "sudo apt-get install" in said and "babysit-no-such-package" in said and "libnothing-dev" in said


def test_nothing_is_missing_where_the_suite_runs() -> None:
    assert suite.missing_packages(sys.executable) == []
