"""Every figure a report embeds has data, for a run of seconds and for a run of hours: checked
on the figures' data (the points each series drew), never on pixels. Run folders written here
with the columns the run's writers give them (sampler FIELDS, the exports' columns)."""

from __future__ import annotations

import csv
import json
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.contract import runfolder
from loadtests.sampler import FIELDS
from reports.build import build_report
from reports.figures import MAX_BINS

T0 = 1_800_000_000.0
JOB_COLS = ["id", "job_type", "priority", "status", "retry_count", "max_retries",
            "required_capability", "worker_id", "created_at", "run_at", "started_at",
            "completed_at", "queue_wait_ms", "end_to_end_ms", "attempts", "last_error",
            "cancel_reason", "tenant"]


def write_csv(path: Path, cols: list[str], rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        w.writerows(rows)


def run_folder(root: Path, length_s: int, *, jobs_per_s: float, seed: int = 1) -> Path:
    """A finished run of `length_s` seconds: creates and polls every second, one GET /dlq and
    one cancel (sparse operations), a requeue that always failed, a fault window, samples."""
    rng = random.Random(seed)
    folder = root / f"run-{length_s}"
    (folder / runfolder.RAW).mkdir(parents=True)
    reqs, jobs = [], []
    created = done = 0
    samples = []
    for t in range(length_s):
        n = rng.randint(0, 2) if jobs_per_s < 1 else int(jobs_per_s)
        for _ in range(n):
            reqs.append({"ts": T0 + t + rng.random(), "method": "POST", "name": "POST /jobs",
                         "response_time_ms": rng.uniform(1, 20), "bytes": 40, "ok": 1,
                         "error": ""})
            at = datetime.fromtimestamp(T0 + t, UTC)
            jobs.append({"id": f"j{len(jobs)}", "job_type": "noop", "priority": 3,
                         "status": "COMPLETED", "retry_count": 0, "max_retries": 3,
                         "worker_id": f"w{len(jobs) % 4}", "created_at": at.isoformat(),
                         "started_at": (at + timedelta(milliseconds=5)).isoformat(),
                         "completed_at": (at + timedelta(milliseconds=30)).isoformat(),
                         "queue_wait_ms": 5.0, "end_to_end_ms": 30.0, "attempts": 1})
            created += 1
            done += 1
        reqs.append({"ts": T0 + t + 0.5, "method": "GET", "name": "GET /jobs/{id}",
                     "response_time_ms": rng.uniform(1, 5), "bytes": 99, "ok": 1, "error": ""})
        samples.append({**dict.fromkeys(FIELDS, 0), "ts": T0 + t, "elapsed_s": t,
                        "phase": "load", "COMPLETED": done, "PENDING": rng.randint(0, 3),
                        "workers_active": 4, "api_up": 1, "redis_up": 1, "pg_up": 1})
    reqs += [{"ts": T0 + 3.2, "method": "GET", "name": "GET /dlq", "response_time_ms": 2.0,
              "bytes": 2, "ok": 1, "error": ""},
             {"ts": T0 + 4.1, "method": "POST", "name": "POST /jobs/{id}/cancel",
              "response_time_ms": 3.0, "bytes": 2, "ok": 1, "error": ""},
             {"ts": T0 + 5.0, "method": "POST", "name": "POST /dlq/{id}/requeue",
              "response_time_ms": 3.0, "bytes": 2, "ok": 0, "error": "500"}]
    write_csv(folder / runfolder.RAW / "requests-1.csv",
              ["ts", "method", "name", "response_time_ms", "bytes", "ok", "error"], reqs)
    write_csv(folder / runfolder.JOBS, JOB_COLS, jobs)
    write_csv(folder / runfolder.SAMPLES, FIELDS, samples)
    fault = {"name": "partition", "args": {"target": "redis", "mode": "hard"},
             "start_s": length_s / 3, "end_s": length_s / 3 + 5, "creates_during": 9,
             "creates_failed_during": 0, "throughput_before_jobs_s": 2.0,
             "throughput_during_jobs_s": 1.0, "recovery_s": 1.5}
    (folder / runfolder.VERDICT).write_text(json.dumps({
        "run_id": folder.name, "scenario": "synthetic", "model": "open", "passed": True,
        "breaches": [], "slos": [], "figures": {"throughput_jobs_s": jobs_per_s},
        "invariants": [{"name": "lost_jobs", "violations": 0, "ok": True},
                       {"name": "completed_twice", "violations": 0, "ok": True}],
        "drill": {"name": "synthetic", "faults": [fault], "zombie_results_rejected": 2}}))
    return folder


@pytest.mark.parametrize(("length_s", "jobs_per_s"), [(12, 0.5), (2 * 3600, 3)])
def test_every_embedded_figure_has_data(tmp_path: Path, length_s: int, jobs_per_s: float
                                        ) -> None:
    folder = run_folder(tmp_path, length_s, jobs_per_s=jobs_per_s)
    build_report(folder)
    summary = json.loads((folder / "report" / "summary.json").read_text())
    figures = summary["figures"]
    assert figures, "no figure at all"
    for fig in figures:
        assert fig["series"], f"{fig['file']} drew no series"
        assert all(points > 0 for points in fig["series"].values()), fig
    # the sparse operations are drawn (as markers), the one that never succeeded is left out
    latency = next(f for f in figures if f["file"] == "latency_over_time.png")
    assert latency["series"]["GET /dlq p99"] == 1
    assert latency["series"]["POST /jobs/{id}/cancel p50"] == 1
    assert not any(k.startswith("POST /dlq/{id}/requeue") for k in latency["series"])
    assert any("POST /dlq/{id}/requeue" in why for why in summary["figures_left_out"])
    # bins sized to the run: an hours-long run still has at most MAX_BINS per series
    assert max(latency["series"].values()) <= MAX_BINS
    throughput = next(f for f in figures if f["file"] == "throughput.png")
    assert 0 < throughput["series"]["completed"] <= MAX_BINS
    # the page embeds exactly the figures listed, each from a file that exists
    html = (folder / "report" / "report.html").read_text()
    assert re.findall(r'<img alt="([^"]+)"', html) == [Path(f["file"]).stem for f in figures]
    # and opens with the headline: verdict, rate, tail, promises, each fault's recovery
    top = html[:html.index("</div>")]
    assert "PASSED" in top
    assert "jobs/s" in top
    assert "end-to-end p99" in top
    assert "lost 0, completed twice 0, zombie results rejected 2" in top
    assert "partition redis (hard)" in top
    assert "recovered 1.5 s after the heal" in top
    assert "Not drawn: latency of POST /dlq/{id}/requeue: no request succeeded" in html


def test_a_run_without_completions_says_why_panels_are_missing(tmp_path: Path) -> None:
    folder = run_folder(tmp_path, 8, jobs_per_s=0.5)
    write_csv(folder / runfolder.JOBS, JOB_COLS, [])
    build_report(folder)
    summary = json.loads((folder / "report" / "summary.json").read_text())
    files = {f["file"] for f in summary["figures"]}
    assert "e2e_distribution.png" not in files
    assert "work_per_worker.png" not in files
    assert not (folder / "report" / "work_per_worker.png").exists()
    assert "latency by percentile: no job completed" in summary["figures_left_out"]
