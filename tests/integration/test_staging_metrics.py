"""Every metric the alert rules and the Grafana dashboard name is really exported: scraped from
a live API process (after a job ran through it) and a live supervisor's control surface."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from core.service.jobs import JobService
from core.supervisor.control import control_app
from tests.conftest import wait_until
from tests.integration.test_api import ApiEnv, api_env, api_service  # noqa: F401
from tests.integration.test_processes import proc_settings, supervising, svc  # noqa: F401
from tests.unit.test_staging_kit import alert_rules, dashboard_exprs, metric_names

# Exported by the third-party servers the stack scrapes, not by the job system: Qdrant's own
# /metrics (state memory runs in local mode here, so there is no server to scrape).
THIRD_PARTY = {"memory_resident_bytes": "qdrant"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                            "_created")}


def exported(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


async def test_every_metric_the_alerts_and_the_dashboard_name_is_exported(
        api_env: ApiEnv, api_service: JobService, svc: JobService,  # noqa: F811
        tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=api_env.url) as http:
        job = (await http.post("/jobs", json={"job_type": "noop"})).json()["job_id"]
        lease = await api_service.acquire("metrics-worker")
        assert lease is not None
        assert lease.job_id == job
        await api_service.complete(lease.job_id, lease.token, {"ok": True})
        api_text = (await http.get("/metrics")).text
    async with supervising(svc, workers=1) as sup:
        await wait_until(lambda: _has_checked(sup), what="a supervisor round")
        transport = httpx.ASGITransport(app=control_app(sup))
        async with httpx.AsyncClient(transport=transport, base_url="http://control") as http:
            sup_text = (await http.get("/metrics")).text
    names = exported(api_text) | exported(sup_text)
    # the figures the alerts compare against really carry values
    for sample in ("jobharness_jobs_created_total 1.0",
                   'jobharness_executions_total{status="COMPLETED"} 1.0',
                   'jobharness_db_pool_connections{state="max"} 4.0',
                   "jobharness_dead_letter_jobs 0.0", "jobharness_worker_slots"):
        assert sample in api_text, sample
    assert "jobharness_redis_memory_bytes" in api_text
    assert 'jobharness_supervisor_workers{state="running"} 1.0' in sup_text
    wanted: dict[str, str] = {}
    for name, rule in alert_rules().items():
        wanted.update(dict.fromkeys(metric_names(rule["expr"]), f"alert {name}"))
    for expr in dashboard_exprs():
        wanted.update(dict.fromkeys(metric_names(expr), f"dashboard: {expr}"))
    missing = {m: where for m, where in wanted.items()
               if m not in names and m not in THIRD_PARTY}
    assert not missing, missing


async def _has_checked(sup: object) -> bool:
    return bool(getattr(sup, "stats", {}).get("checks"))
