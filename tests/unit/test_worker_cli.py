"""`jobharness worker` and `jobharness supervisor` refuse bad slot flags by name, before they
start anything."""

from __future__ import annotations

import pytest

from core.cli.main import main


@pytest.mark.parametrize(("args", "message"), [
    (["worker", "--prefetch", "-1"], "--prefetch must be between 0 and 1000, not -1"),
    (["worker", "--concurrency", "0"], "--concurrency must be between 1 and 1000, not 0"),
    (["supervisor", "--workers", "1", "--prefetch", "1001"],
     "--prefetch must be between 0 and 1000, not 1001"),
    (["supervisor", "--workers", "1", "--concurrency", "1001"],
     "--concurrency must be between 1 and 1000, not 1001"),
])
def test_bad_slot_flags_are_refused_by_name(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) != 0
    assert message in capsys.readouterr().err
