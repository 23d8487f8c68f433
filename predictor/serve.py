"""The predictor inside the supervisor: read new health samples, score every live worker each
interval, apply the policy, and log every verdict to a CSV file.

Samples are read incrementally from `worker_health_samples` (the rows the workers write with
each heartbeat), so scoring needs no extra traffic to the workers; the clock is PostgreSQL's,
the same that stamped the samples.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from predictor.features import LONG_WINDOW_S, TREND_FEATURES, Series, rows_at
from predictor.model import LoadedModel, ModelError
from predictor.policy import Policy, Streaks
from predictor.shipped import load_policy

log = logging.getLogger("jobharness.predictor")
KEEP_S = LONG_WINDOW_S + 10
LOG_FIELDS = ("t", "worker_id", "p_healthy", "p_degraded", "p_failing", "verdict",
              "confidence", "streak", "action")
SAMPLES_SQL = """
    SELECT worker_id, extract(epoch FROM sampled_at)::float8 AS t, rss_bytes, cpu_percent,
           loop_lag_ms, in_flight, completed, failed,
           coalesce((extra->>'timed_out')::bigint, 0) AS timed_out, duration_p99_ms
    FROM worker_health_samples
    WHERE worker_id = ANY($1) AND sampled_at > to_timestamp($2)
    ORDER BY worker_id, sampled_at"""


@dataclass(frozen=True)
class Verdict:
    worker_id: str
    verdict: str
    confidence: float
    p_failing: float
    fire: bool  # the policy says: replace it now (unless it is held out)
    held_out: bool


class LivePredictor:
    def __init__(self, model: LoadedModel, policy: Policy,
                 log_path: Path | None) -> None:
        self.model = model
        self.policy = policy
        self.streaks = Streaks(policy)
        # the trend features only for a model that uses them (the hand rule does not)
        self.trends = not set(getattr(model, "features", ())).isdisjoint(TREND_FEATURES)
        self.samples: dict[str, deque[tuple[float, ...]]] = {}
        self.since = 0.0
        self._log = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            new = not log_path.exists()
            self._log = open(log_path, "a", newline="")  # noqa: SIM115 (closed in close())
            self._writer = csv.writer(self._log)
            if new:
                self._writer.writerow(LOG_FIELDS)
            log_path.with_suffix(".json").write_text(json.dumps({
                # the rule by its name; a model by its file
                "model": "hand-rule" if model.meta.get("kind") == "rule" else str(model.path),
                "trained_at": model.meta.get("trained_at"),
                "threshold": policy.threshold, "k": policy.k, "holdout": policy.holdout,
                "min_samples": policy.min_samples,
                "horizon_s": model.meta.get("horizon_s")}, indent=2))

    @classmethod
    def from_path(cls, path: str, *, threshold: float | None, k: int | None, holdout: float,
                  log_path: Path | None, sample_interval_s: float | None = None
                  ) -> LivePredictor:
        """Load the policy `path` names (predictor/shipped.py: `default`, `hand-rule`,
        `learnt` or a model file); ModelError if unusable, including one made for samples
        taken at a very different interval (its window features would not mean the same
        thing)."""
        from threadpoolctl import threadpool_limits

        # one thread: the supervisor shares the machine with its workers; OpenMP threads
        # spinning for a 100-row prediction would take their CPU
        threadpool_limits(1)
        model = load_policy(path)
        trained = model.meta.get("sampling_interval_s")
        if trained and sample_interval_s and not \
                0.5 <= sample_interval_s / float(trained) <= 2.0:
            raise ModelError(
                f"model {model.path} was trained on health samples every {trained:g} s; this "
                f"fleet samples every {sample_interval_s:g} s (JOBHARNESS_HEALTH_SAMPLE_S): "
                "retrain it on samples of this fleet (docs/predictor.md)")
        policy = Policy(threshold=threshold or model.threshold, k=k or model.k, holdout=holdout)
        return cls(model, policy, log_path)

    async def refresh(self, pool: Any, worker_ids: list[str]) -> float:
        """Read samples newer than the last read; returns the database's clock."""
        async with pool.acquire() as conn:
            now = float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())"))
            since = self.since - 5 if self.since else now - KEEP_S
            rows = await conn.fetch(SAMPLES_SQL, worker_ids, since)
        for r in rows:
            buf = self.samples.setdefault(r["worker_id"], deque())
            t = float(r["t"])
            if buf and t <= buf[-1][0]:
                continue  # already read
            buf.append((t, r["rss_bytes"] / 2**20, float(r["cpu_percent"]),
                        float(r["loop_lag_ms"]), float(r["in_flight"]), float(r["completed"]),
                        float(r["failed"]), float(r["timed_out"]),
                        np.nan if r["duration_p99_ms"] is None else float(r["duration_p99_ms"])))
            self.since = max(self.since, t)
        for wid in list(self.samples):
            if wid not in worker_ids:
                del self.samples[wid]
                self.streaks.forget(wid)
                continue
            buf = self.samples[wid]
            while buf and buf[0][0] < now - KEEP_S:
                buf.popleft()
        return now

    def _series(self, wid: str) -> Series:
        a = np.array(self.samples[wid], dtype=float)
        return Series(wid, a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5], a[:, 6],
                      a[:, 7], a[:, 8])

    def score(self, now: float) -> list[Verdict]:
        series = [self._series(w) for w, buf in self.samples.items() if buf]
        rows = rows_at(series, now, self.trends)
        if rows.empty:
            return []
        proba = self.model.predict(rows)
        out = []
        for (_, row), (_, p) in zip(rows.iterrows(), proba.iterrows(), strict=True):
            wid = str(row["worker_id"])
            pf = float(p["p_failing"])
            fire = self.streaks.update(wid, pf, float(row["samples_in_window"]))
            if row["samples_in_window"] < self.policy.min_samples:
                verdict, conf = "new", 1.0  # too few samples to judge yet
            elif pf >= self.policy.threshold:
                verdict, conf = "failing", pf
            else:
                verdict = "degraded" if p["p_degraded"] > p["p_healthy"] else "healthy"
                conf = float(p[f"p_{verdict}"])
            out.append(Verdict(wid, verdict, conf, pf, fire, self.policy.held_out(wid)))
            self._write(now, wid, p, verdict, conf, fire)
        return out

    def _write(self, now: float, wid: str, p: pd.Series, verdict: str, conf: float,
               fire: bool) -> None:
        if self._log is None:
            return
        action = ("holdout" if self.policy.held_out(wid) else "fire") if fire else ""
        self._writer.writerow([f"{now:.3f}", wid, f"{p['p_healthy']:.4f}",
                               f"{p['p_degraded']:.4f}", f"{p['p_failing']:.4f}", verdict,
                               f"{conf:.4f}", self.streaks.count.get(wid, 0), action])

    def note_action(self, now: float, wid: str, action: str) -> None:
        """Log what the supervisor did about a firing: replace, or held back (deferred by the
        shared rate limit, or by the storm guards: budget, breaker, fleetwide)."""
        if self._log is not None:
            self._writer.writerow([f"{now:.3f}", wid, "", "", "", "", "",
                                   self.streaks.count.get(wid, 0), action])
            self._log.flush()

    def forget(self, wid: str) -> None:
        self.samples.pop(wid, None)
        self.streaks.forget(wid)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


__all__ = ["LivePredictor", "ModelError", "Verdict"]
