"""What one reconciler pass costs with 1 and with 100,000 jobs queued (invariant 8: a pass
costs pages of the sweep, not the backlog), in a throw-away schema on this machine's embedded
servers:

    .venv/bin/python benchmarks/reconcile_cost.py --backlog 1,100000 --passes 7

For each backlog, that many no-op jobs are created and indexed, then passes run one after the
other with nothing to repair: the median pass's wall time, Valkey's CPU per pass (all
commands, from `INFO commandstats`) and its longest single command (the time Valkey was
blocked for everyone else), and the entries the pass read."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.jobs.model import JobSpec
from core.service.reconciler import Reconciler
from core.service.runtime import Runtime, endpoints, open_runtime
from core.settings import load_settings
from loadtests.scratch import scratch_schema


async def valkey_usec(rt: Runtime) -> tuple[int, dict[str, tuple[int, int]]]:
    """(total CPU in us, per command (calls, usec)) from INFO commandstats."""
    stats: dict[str, Any] = await rt.dispatch.client.info("commandstats")
    per = {k: (int(v["calls"]), int(v["usec"])) for k, v in stats.items()}
    return sum(u for _, u in per.values()), per


async def measure(rt: Runtime, backlog: int, passes: int) -> dict[str, float]:
    await rt.pool.execute("TRUNCATE jobs, job_executions, job_dependencies CASCADE")
    await rt.dispatch.flush_prefix()
    for start in range(0, backlog, 1000):
        await rt.service.create_batch([JobSpec(job_type="noop", payload={"blob": "x" * 180},
                                               tenant=f"t{(start + i) % 1000}")
                                       for i in range(min(1000, backlog - start))])
    await rt.pool.execute("ANALYZE")
    rec = Reconciler(rt.service)
    await rec.run_once()  # warm: statements prepared, connections open
    walls, cpus, longest, swept = [], [], [], []
    for _ in range(passes):
        cpu0, per0 = await valkey_usec(rt)
        t0 = time.perf_counter()
        report = await rec.run_once()
        walls.append((time.perf_counter() - t0) * 1000)
        cpu1, per1 = await valkey_usec(rt)
        cpus.append(cpu1 - cpu0)
        # the longest command of the pass, as its mean over the calls it made (an upper
        # bound's stand-in: commandstats keeps sums, not maxima)
        longest.append(max(((u1 - per0.get(k, (0, 0))[1]) / max(1, c1 - per0.get(k, (0, 0))[0])
                            for k, (c1, u1) in per1.items()
                            if c1 > per0.get(k, (0, 0))[0] and k != "cmdstat_info"),
                           default=0.0))
        swept.append(getattr(report, "swept", -1))
        if report.reindexed or report.orphans_removed:
            raise RuntimeError(f"a pass repaired something with nothing to repair: {report}")
    return {"wall_ms": statistics.median(walls), "valkey_us": statistics.median(cpus),
            "longest_cmd_us": statistics.median(longest), "swept": statistics.median(swept)}


async def main(backlogs: list[int], passes: int) -> None:
    with endpoints(load_settings(), keep_running=True) as settings:
        settings = replace(settings, memory=False)
        async with scratch_schema(settings, "reconcile_cost") as scratch, open_runtime(
                scratch, pool_size=2, redis_connections=2, migrate_first=False) as rt:
            base: dict[str, float] | None = None
            for n in backlogs:
                r = await measure(rt, n, passes)
                base = base or r
                print(f"backlog {n:>7}: pass {r['wall_ms']:8.1f} ms  Valkey "
                      f"{r['valkey_us']:9.0f} us/pass  longest command {r['longest_cmd_us']:8.0f}"
                      f" us  read {r['swept']:6.0f}  (x{r['wall_ms'] / base['wall_ms']:.2f} "
                      f"wall, x{r['valkey_us'] / max(1.0, base['valkey_us']):.2f} Valkey)",
                      flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", default="1,100000", help="queued jobs, comma-separated")
    parser.add_argument("--passes", type=int, default=7)
    a = parser.parse_args()
    asyncio.run(main([int(x) for x in a.backlog.split(",")], a.passes))
