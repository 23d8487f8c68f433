"""`jobharness run` end to end: real API and supervisor processes, real Locust, real stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.settings import Settings
from loadtests.cli import main


def run_args(server_settings: Settings, tmp_path: Path, *extra: str) -> list[str]:
    assert server_settings.pg_dsn
    assert server_settings.redis_url
    return ["run", *extra, "--out", str(tmp_path), "--cleanup", "--json",
            "--pg-dsn", server_settings.pg_dsn, "--redis-url", server_settings.redis_url]


def read_back_every_file(folder: Path) -> None:
    """Every file the run folder's names promise (core/contract/runfolder.py) is there and
    parses: CSV with the header its writer gives, JSON, YAML; the ones a smoke run does not
    write (a predictor's) are named as such."""
    import csv as csv_

    import yaml

    from core.contract import runfolder
    from core.contract.observe import EXPORTS
    from loadtests.sampler import FIELDS

    optional = {runfolder.PREDICTIONS, runfolder.PREDICTIONS_META}
    names = {v for k, v in vars(runfolder).items() if k.isupper() and isinstance(v, str)}
    for name in sorted(names - optional - {runfolder.LOCUST_CSV, runfolder.MEMORY_OWNER_STATE}):
        path = folder / name
        assert path.exists(), name
        if name.endswith(".json"):
            assert isinstance(json.loads(path.read_text()), dict), name
        elif name.endswith(".yaml"):
            assert isinstance(yaml.safe_load(path.read_text()), dict), name
        elif name.endswith(".csv"):
            with open(path, newline="") as fh:
                header = next(csv_.reader(fh))
            if name in EXPORTS:
                assert header, name
            if name == runfolder.SAMPLES:
                assert header == FIELDS
    assert not any((folder / name).exists() for name in optional)  # no predictor here


def test_run_smoke_passes_and_writes_the_run_folder(
    server_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(run_args(server_settings, tmp_path, "smoke")) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["passed"]
    assert verdict["breaches"] == []
    assert verdict["figures"]["jobs"] == verdict["figures"]["jobs_acknowledged"] == 200
    assert any(c["name"] == "accepted_jobs_missing" and c["ok"] for c in verdict["invariants"])
    (folder,) = tmp_path.iterdir()
    read_back_every_file(folder)
    for name in ("verdict.json", "config.json", "scenario.yaml", "samples.csv", "jobs.csv",
                 "executions.csv", "worker_health.csv", "locust_stats.csv", "locust.html"):
        assert (folder / name).stat().st_size > 0, name
    raw = list((folder / "raw").glob("requests-*.csv"))
    assert raw
    assert len(raw[0].read_text().splitlines()) > 10
    assert len((folder / "samples.csv").read_text().splitlines()) >= 3
    # the report, written at the end of the run, agrees with the raw data
    report = folder / "report"
    assert verdict["report"] == str(report / "report.html")
    for name in ("latency_over_time.png", "throughput.png", "queue_depth.png", "workers.png",
                 "e2e_distribution.png", "work_per_worker.png", "summary.md", "summary.json"):
        assert (report / name).stat().st_size > 0, name
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6  # self-contained
    summary = json.loads((report / "summary.json").read_text())
    import csv

    with open(raw[0], newline="") as fh:
        creates = sorted(float(r["response_time_ms"]) for r in csv.DictReader(fh)
                         if r["name"] == "POST /jobs" and r["ok"] == "1")
    rank = -(-99 * len(creates) // 100)  # nearest rank, computed here independently
    op = next(o for o in summary["operations"] if o["operation"] == "POST /jobs")
    assert op["count"] >= len(creates)
    assert op["p99_ms"] == creates[rank - 1]
    assert summary["jobs"]["total"] == 200
    with open(folder / "executions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    attempts: dict[str, int] = {}
    for r in rows:
        attempts[r["job_id"]] = attempts.get(r["job_id"], 0) + 1
    assert summary["executions"] == {
        "executions": len(rows),
        "abandoned": sum(r["status"] == "LEASE_EXPIRED" for r in rows),
        "timed_out": sum(r["status"] == "TIMED_OUT" for r in rows),
        "retries": sum(n - 1 for n in attempts.values())}
    # (the retries are checked above against the rows, whatever their number: the smoke mix's
    # flaky jobs usually fail some attempts, but in one run all 13 at p = 0.3 passed at once)
    assert len(rows) >= 200
    assert summary["predictor"] is None


def test_slo_breach_exits_non_zero_naming_it(
    server_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text("name: strict\njobs: 30\nworkers: 2\nusers: 3\nspawn_rate: 3\n"
                      "observers: 0\nmax_load_s: 30\ndrain_timeout_s: 30\n"
                      "slo: {create_p99_ms: 0.001}\n")
    out_dir = tmp_path / "runs"
    assert main(run_args(server_settings, out_dir, str(strict))) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["breaches"] == ["create_p99_ms"]
    assert all(c["ok"] for c in verdict["invariants"])


def test_unknown_scenario_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "no-such-scenario", "--pg-dsn", "postgresql://x@127.0.0.1:1/x",
                 "--redis-url", "redis://127.0.0.1:1/0"]) == 1
    err = capsys.readouterr().err
    assert "unknown scenario 'no-such-scenario'" in err
    assert "smoke" in err


def test_report_compare_flags_a_real_slowdown_only(
    server_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv
    import shutil

    runs = tmp_path / "runs"
    assert main(run_args(server_settings, runs, "smoke")) == 0
    capsys.readouterr()
    (base,) = runs.iterdir()
    slower = tmp_path / "slower"
    shutil.copytree(base, slower)
    for path in (slower / "raw").glob("requests-*.csv"):  # every create three times slower
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        for r in rows:
            if r["name"].startswith("POST /jobs") and "{id}" not in r["name"]:
                r["response_time_ms"] = str(float(r["response_time_ms"]) * 3)
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    assert main(["report", "compare", str(base), str(slower)]) == 1
    result = json.loads(capsys.readouterr().out)
    assert {"create_p50_ms", "create_p99_ms"} <= set(result["regressions"])
    assert not any(m.startswith("end_to_end") for m in result["regressions"])
    assert Path(result["plot"]).stat().st_size > 0
    # a run against itself: nothing flagged (the noise guard proper, on two independent
    # samples of one distribution, is tests/unit/test_report_maths.py)
    assert main(["report", "compare", str(base), str(base)]) == 0
    assert json.loads(capsys.readouterr().out)["regressions"] == []


def test_a_run_against_surfaces_that_ask_for_a_token(
    server_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With JOBHARNESS_API_TOKEN set, the API, the control surface and the fault proxy the run
    starts all ask for it, and every client of the run (Locust's users, the sampler, the
    drill's actions and probes) sends it: the run passes, its faults applied."""
    monkeypatch.setenv("JOBHARNESS_API_TOKEN", "e2e-token")
    drill = tmp_path / "short.yaml"
    drill.write_text(
        "name: short\nsettings: {heartbeat_interval_s: 1, heartbeat_ttl_s: 4, lease_s: 4,"
        " redis_timeout_s: 0.5}\nsteady_state:\n  - {probe: api_healthy}\n"
        "  - {probe: workers_active_at_least, fraction: 1.0}\nmethod:\n"
        "  - {action: kill_workers, at_s: 1, count: 1}\n"
        "  - {action: partition, at_s: 2, duration_s: 2, target: redis, mode: hard}\n"
        "expect_no_replacement_during: [redis]\nload_after_s: 3\nsettle_s: 30\n")
    out = tmp_path / "runs"
    assert main(run_args(server_settings, out, "demo", "--drill", str(drill))) == 0, \
        capsys.readouterr().out[-2000:]
    verdict = json.loads(capsys.readouterr().out)
    faults = [j for j in verdict["drill"]["journal"] if j["kind"] == "fault"]
    assert [f["name"] for f in faults] == ["kill_workers", "partition"]
    assert len(faults[0]["result"]["killed"]) == 1  # the control surface took the token
    assert verdict["figures"]["requests_failed"] == 0  # every Locust request carried it
    assert verdict["figures"]["jobs_acknowledged"] > 0
    (folder,) = out.iterdir()
    assert "e2e-token" not in (folder / "config.json").read_text()
