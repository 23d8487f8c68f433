"""SLO evaluation of a run folder: raw request rows (unrounded) and the jobs' PostgreSQL
timestamps in, `verdict.json` out. Pure file reading, no servers."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from core.contract import runfolder
from core.contract.figures import percentile
from loadtests.scenario import Scenario

CREATE_NAMES = ("POST /jobs", "POST /jobs/batch")


def read_requests(raw_dir: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(raw_dir.glob("requests-*.csv")):
        with open(path, newline="") as fh:
            rows += list(csv.DictReader(fh))
    return rows


def read_jobs(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def accepted_ids(raw_dir: Path) -> set[str]:
    """Every job id the API acknowledged (201) to Locust."""
    ids: set[str] = set()
    for path in raw_dir.glob("accepted-*.txt"):
        ids |= {line.strip() for line in path.read_text().splitlines() if line.strip()}
    return ids


def missing_accepted(run_dir: Path) -> dict[str, Any]:
    """Invariant 2 from the client's side: an acknowledged job exists in the store."""
    known = {j["id"] for j in read_jobs(run_dir / runfolder.JOBS)}
    missing = sorted(accepted_ids(run_dir / runfolder.RAW) - known)
    return {"name": "accepted_jobs_missing",
            "description": "jobs the API acknowledged (201) that are not in the jobs table",
            "violations": len(missing), "examples": missing[:10], "ok": not missing}


def figures(run_dir: Path, scenario: Scenario) -> dict[str, Any]:
    requests = read_requests(run_dir / runfolder.RAW)
    creates = [r for r in requests if r["name"] in CREATE_NAMES]
    intended = [float(r["response_time_ms"]) for r in requests
                if r["name"].endswith("(from intended start)") and r["ok"] == "1"]
    create_ms = [float(r["response_time_ms"]) for r in creates if r["ok"] == "1"]
    failed = sum(1 for r in requests if r["ok"] != "1")
    jobs = read_jobs(run_dir / runfolder.JOBS)
    done = [float(j["end_to_end_ms"]) for j in jobs if j["status"] == "COMPLETED"
            and j["end_to_end_ms"]]
    by_status: dict[str, int] = {}
    for j in jobs:
        by_status[j["status"]] = by_status.get(j["status"], 0) + 1
    return {
        "model": scenario.model,
        "requests": len(requests),
        "requests_failed": failed,
        "error_rate": failed / len(requests) if requests else 0.0,
        "create_requests": len(creates),
        "create_p50_ms": percentile(create_ms, 50),
        "create_p99_ms": percentile(create_ms, 99),
        "create_p99_from_intended_start_ms": percentile(intended, 99),
        "jobs": len(jobs),
        "jobs_requested": scenario.jobs,
        "jobs_acknowledged": len(accepted_ids(run_dir / runfolder.RAW)),
        "jobs_by_status": by_status,
        "e2e_p50_ms": percentile(done, 50),
        "e2e_p99_ms": percentile(done, 99),
    }


def evaluate(scenario: Scenario, figs: dict[str, Any], checks: list[dict[str, Any]]
             ) -> dict[str, Any]:
    """The SLO table and the overall verdict (every SLO and invariant must hold). Lost and
    doubly completed jobs are judged once, by the invariant checks (`lost_jobs`,
    `completed_twice`), not again as SLOs."""
    slo = scenario.slo
    # The open model judges creates by their latency from the intended start (no
    # coordinated omission); the closed model can only report what its users saw.
    create_p99 = figs["create_p99_from_intended_start_ms"] if scenario.model == "open" \
        else figs["create_p99_ms"]
    rows = [
        ("create_p99_ms", create_p99, slo.create_p99_ms),
        ("error_rate", figs["error_rate"], slo.error_rate_max),
        ("e2e_p99_ms", figs["e2e_p99_ms"], slo.e2e_p99_ms),
    ]
    slos = [{"name": name, "value": value, "limit": limit,
             "ok": value is not None and value <= limit} for name, value, limit in rows]
    passed = all(s["ok"] for s in slos) and all(c["ok"] for c in checks)
    breaches = [s["name"] for s in slos if not s["ok"]] + [c["name"] for c in checks
                                                           if not c["ok"]]
    return {"passed": passed, "breaches": breaches, "slos": slos, "invariants": checks}


def window_load(requests: list[dict[str, str]], windows: list[dict[str, Any]],
                t0_wall: float) -> list[dict[str, Any]]:
    """The load each fault window fell on: requests, creates and failed creates that started
    in it (a fault without duration counts the second after it). `t0_wall` is the wall-clock
    time of the run's second 0."""
    # a raw row's ts is when the request returned: it started response_time_ms before
    starts = [(float(r["ts"]) - float(r["response_time_ms"]) / 1000 - t0_wall,
               r["name"] in CREATE_NAMES, r["ok"] == "1")
              for r in requests if not r["name"].endswith("(from intended start)")]
    out = []
    for w in windows:
        lo, hi = w["start_s"], max(w["end_s"], w["start_s"] + 1.0)
        inside = [(create, ok) for t, create, ok in starts if lo <= t <= hi]
        creates = [ok for create, ok in inside if create]
        out.append({"requests_during": len(inside), "creates_during": len(creates),
                    "creates_failed_during": creates.count(False),
                    "creates_per_s_during": round(len(creates) / (hi - lo), 1)})
    return out


def faults_under_load(faults: list[dict[str, Any]]) -> dict[str, Any]:
    """A drill's faults prove something only when they fall on load: every window saw
    creates."""
    idle = [f"{f['name']} {f['start_s']:g}-{f['end_s']:g} s: no create request"
            for f in faults if not f["creates_during"]]
    return {"name": "faults_under_load",
            "description": "every fault window saw create requests (the faults fell on load)",
            "violations": len(idle), "examples": idle[:10], "ok": not idle}
