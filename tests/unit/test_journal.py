"""journald's rate limit, read from its config files as journald reads them."""

from __future__ import annotations

import pytest

from babysit.executors.systemd.journal import rate_limit, rate_limit_warning


@pytest.mark.parametrize("texts, limited", [
    ([], True),  # journald's defaults: 10000 per 30s
    (["[Journal]\n#RateLimitIntervalSec=0\n"], True),
    (["[Journal]\nRateLimitIntervalSec=0\n"], False),
    (["[Journal]\nRateLimitIntervalSec=0s\n"], False),
    (["[Journal]\nRateLimitBurst=0\n"], False),
    (["[Journal]\nRateLimitIntervalSec=0\n", "[Journal]\nRateLimitIntervalSec=10s\n"], True),  # a later drop-in wins
    (["[Other]\nRateLimitIntervalSec=0\n"], True),
])
def test_rate_limit_warning(texts: list[str], limited: bool) -> None:
    warning = rate_limit_warning(texts)
    assert (warning is not None) == limited
    if warning:
        assert "RateLimitIntervalSec=0" in warning


def test_rate_limit_values() -> None:
    assert rate_limit(["[Journal]\nRateLimitBurst=500\n"]) == ("30s", "500")

