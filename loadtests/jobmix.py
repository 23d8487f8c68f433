"""Request bodies for the producers: single creates, batches and dependency DAGs, drawn from
a scenario's mix with a seeded random source. Pure, so it is unit-tested without Locust."""

from __future__ import annotations

import random
import string
from typing import Any

from loadtests.scenario import Scenario


class JobFactory:
    def __init__(self, scenario: Scenario, rng: random.Random) -> None:
        self.s = scenario
        self.rng = rng
        self._types = list(scenario.mix)
        self._weights = [scenario.mix[t] for t in self._types]
        self._tenants = list(scenario.tenants)
        self._tenant_weights = [scenario.tenants[t] for t in self._tenants]
        self._n = 0

    def job(self, **extra: Any) -> dict[str, Any]:
        job_type = self.rng.choices(self._types, self._weights)[0]
        payload: dict[str, Any] = dict(self.s.job_params.get(job_type, {}))
        if job_type in ("flaky", "sleep"):
            payload.setdefault("seed", self.rng.randrange(1 << 30))
        low, high = self.s.payload_bytes
        size = self.rng.randint(low, high)
        if size:
            payload["pad"] = "".join(self.rng.choices(string.ascii_letters, k=size))
        self._n += 1
        body = {"job_type": job_type, "payload": payload,
                "priority": self.rng.choice(self.s.priorities),
                "max_retries": self.s.max_retries, "timeout_s": self.s.timeout_s, **extra}
        if self._tenants:
            body["tenant"] = self.rng.choices(self._tenants, self._tenant_weights)[0]
        return body

    def dag(self) -> list[dict[str, Any]]:
        """A chain of three or a diamond, linked by batch refs."""
        tag = f"d{self._n}"
        if self.rng.random() < 0.5:
            return [self.job(ref=f"{tag}a"), self.job(ref=f"{tag}b", depends_on=[f"{tag}a"]),
                    self.job(depends_on=[f"{tag}b"])]
        return [self.job(ref=f"{tag}t"), self.job(ref=f"{tag}l", depends_on=[f"{tag}t"]),
                self.job(ref=f"{tag}r", depends_on=[f"{tag}t"]),
                self.job(depends_on=[f"{tag}l", f"{tag}r"])]

    def next_request(self, budget_left: int) -> tuple[str, Any, int]:
        """(path, body, jobs in it) for the next create, within `budget_left` jobs."""
        roll = self.rng.random()
        if roll < self.s.dag_fraction and budget_left >= 4:
            jobs = self.dag()
            return "/jobs/batch", {"jobs": jobs}, len(jobs)
        if roll < self.s.dag_fraction + self.s.batch_fraction and budget_left >= 2:
            n = min(self.s.batch_size, budget_left)
            return "/jobs/batch", {"jobs": [self.job() for _ in range(n)]}, n
        return "/jobs", self.job(), 1
