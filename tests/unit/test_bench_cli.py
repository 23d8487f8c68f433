"""`jobharness bench` refuses bad flags before it starts anything."""

from __future__ import annotations

import pytest

from loadtests.cli import main


@pytest.mark.parametrize(("args", "message"), [
    (["api", "--rate", "5"], "--rate applies to `bench core`"),
    (["core", "--rate", "0"], "--rate applies to `bench core` and must be 1..100000"),
    (["batch", "--batch-size", "0"], "--batch-size must be 1..10000"),
    (["batch", "--batch-size", "10001"], "--batch-size must be 1..10000"),
    (["e2e", "--worker-nice", "20"], "--worker-nice must be between 0 and 19, got 20"),
    (["api", "--processes", "0"], "--processes must be 1..16"),
    (["dispatch", "--acquires", "0"], "--acquires must be 1..100000"),
    (["dispatch", "--rounds", "11"], "--rounds 1..10"),
])
def test_bad_bench_flags_are_refused_by_name(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *args]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("tenants", ["1,x", "0,5", "", "2000000"])
def test_bad_tenant_counts_are_refused_by_name(tenants: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "dispatch", "--tenants", tenants])
    assert "--tenants" in capsys.readouterr().err
