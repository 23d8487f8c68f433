"""jobharness beside two peers, same machine, same run, same workload (docs/performance.md):

    .venv/bin/python benchmarks/peers/compare.py --rounds 3 --jobs 10000 [--loop asyncio]

Each system, in turn within a round (interleaved, so a drift of the machine spreads over all):
a client loop of N single creates, each awaited and durable where the system is (latency per
call), then one worker process with 100 concurrent slots drains those N no-op jobs (~200-byte
JSON payload), timed from the first job's start to the last one's end. jobharness also drains
with 10 processes x 10; and both layouts again with each worker holding jobs leased ahead of
its free slots ("ours1p", "ours10p": `--prefetch1`, `--prefetch10` jobs ahead, shown as
1x100+P, 10x10+P). pgqueuer's worker (batches of 50) holds at most 100 picked jobs (its dequeue
counts them, a finished job among them until its buffered completion is written); a
jobharness worker gives a slot back while its job's report is in flight, so even the rows
without +P may hold up to twice their slots leased, and the +P rows hold P more ahead. Every
row runs at most 100 jobs at once, the comparison's 100 slots. Medians over the rounds, and
ratios to pgqueuer's.
Each drain's CPU per job is measured too, by part: PostgreSQL's processes, Valkey, and the
system's own client processes (jobharness' worker processes, the peer's process), from
snapshots at the start and the end of the drain (loadtests/bench/cpu.py; the peers signal
both ends on their stdout). Those say how far a drain could go with both cores busy: two
cores' worth of CPU over the total per job.
The asyncio clients (jobharness' create loop, pgqueuer's enqueue loop and its worker) run on
the event loop `--loop` names, the same for both: uvloop (the default, what jobharness' own
processes use) or asyncio.
jobharness' worker processes always run on uvloop, as they do in production.

The peers (pgqueuer, dramatiq; pinned in requirements.txt) go into an environment of their
own, made here on first use (.jobharness/peers-venv): the project never depends on them. All
of them use this machine's embedded servers (started if needed)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import venv
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from peer_result import result  # noqa: E402  (this folder, on the path as the script's own)

from core.jobs.model import JobSpec  # noqa: E402
from core.service.runtime import endpoints, open_runtime  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402
from loadtests.bench.cpu import PARTS, CpuMeter, descendants  # noqa: E402
from loadtests.bench.dispatch import drain  # noqa: E402
from loadtests.scratch import scratch_schema  # noqa: E402

PAYLOAD = {"blob": "x" * 180}  # ~200 bytes as JSON
SYSTEMS = ("ours1", "ours10", "ours1p", "ours10p", "pgqueuer", "dramatiq")
LOOP = ["uvloop"]  # the asyncio clients' event loop (--loop), for the peers too


def peers_python(data_dir: Path) -> Path:
    """The peers' environment, made (and filled from requirements.txt) when missing."""
    home = data_dir / "peers-venv"
    python = home / "bin" / "python"
    stamp = home / ".installed"
    wanted = (HERE / "requirements.txt").read_text()
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"making the peers' environment in {home} ...", flush=True)
        venv.create(home, with_pip=True, clear=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r",
                               str(HERE / "requirements.txt")], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"installing the peers failed:\n{done.stderr[-2000:]}")
        stamp.write_text(wanted)
    return python


async def ours(settings: Settings, jobs: int, processes: int, slots: int,
               prefetch: int = 0) -> dict[str, Any]:
    tag = f"peers_{os.getpid()}"
    settings = replace(settings, heartbeat_interval_s=2.0, heartbeat_ttl_s=10.0, memory=False)
    async with scratch_schema(settings, tag) as scratch, open_runtime(
            scratch, pool_size=4, redis_connections=4, migrate_first=False) as rt:
        took = []
        t0 = time.perf_counter()
        for _ in range(jobs):
            s = time.perf_counter()
            await rt.service.create(JobSpec(job_type="noop", payload=PAYLOAD))
            took.append(time.perf_counter() - s)
        enqueue_s = time.perf_counter() - t0
        cpu = CpuMeter(descendants)
        drain_jobs_s = await drain(rt, jobs, processes=processes, concurrency=slots,
                                   prefetch=prefetch, cpu=cpu)
    ahead = f"+{prefetch}" if prefetch else ""
    return {**result(f"jobharness {processes}x{slots}{ahead}", jobs, drained=jobs,
                     drain_s=jobs / drain_jobs_s, enqueue_s=enqueue_s,
                     enqueue_latencies_s=took), **cpu_columns(cpu)}


def cpu_columns(cpu: CpuMeter) -> dict[str, float]:
    parts = cpu.per_job_us()
    return {**{f"cpu_{part}_us": us for part, us in parts.items()},
            "cpu_total_us": round(sum(parts.values()), 1)}


async def pgqueuer(python: Path, settings: Settings, jobs: int) -> dict[str, Any]:
    import asyncpg

    assert settings.pg_dsn
    base = settings.pg_dsn.rsplit("/", 1)[0]
    name = f"peer_pgqueuer_{os.getpid()}"
    admin = await asyncpg.connect(settings.pg_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.execute(f"CREATE DATABASE {name}")
        return _peer(python, "peer_pgqueuer.py", {"PEER_DSN": f"{base}/{name}"}, jobs)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


def _peer(python: Path, script: str, env: dict[str, str], jobs: int) -> dict[str, Any]:
    """One round of a peer script; its drain's CPU window opens and closes at the phases it
    prints (peer_result.handshake)."""
    # stderr is read at the end, from a file: a pipe could fill and stall the peer
    with tempfile.TemporaryFile(mode="w+") as errors, subprocess.Popen(
            [str(python), str(HERE / script)], text=True, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=errors,
            env={**os.environ, **env, "PEER_JOBS": str(jobs), "PEER_SLOTS": "100",
                 "PEER_LOOP": LOOP[0], "PEER_HANDSHAKE": "1"}) as proc:
        assert proc.stdin
        assert proc.stdout
        guard = threading.Timer(1200, proc.kill)  # a peer that hangs ends the round
        guard.start()
        peer = psutil.Process(proc.pid)
        cpu = CpuMeter(lambda: [peer, *peer.children(recursive=True)])
        lines = []
        try:
            for line in proc.stdout:
                if line.strip() == "drain":
                    cpu.start(0)
                elif line.strip() == "drained":
                    cpu.stop(jobs)
                else:
                    lines.append(line)
                    continue
                proc.stdin.write("\n")
                proc.stdin.flush()
            proc.wait()
        finally:
            guard.cancel()
        if proc.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"{script} failed ({proc.returncode}):\n{errors.read()[-2000:]}")
    return {**json.loads(lines[-1]), **cpu_columns(cpu)}


def table(rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Medians per system, each with its ratios to pgqueuer's."""
    keys = ("drain_jobs_s", "enqueue_per_s", "enqueue_p99_ms", "cpu_total_us",
            *(f"cpu_{part}_us" for part in PARTS))
    med = {name: {k: statistics.median(r[k] for r in runs) for k in keys}
           for name, runs in rows.items()}
    ref = med.get("pgqueuer")
    out = []
    for name, m in med.items():
        row: dict[str, Any] = {"system": name, "rounds": len(rows[name]),
                               **{k: round(v, 2) for k, v in m.items()}}
        if ref:
            row["drain_vs_pgqueuer"] = round(m["drain_jobs_s"] / ref["drain_jobs_s"], 3)
            row["enqueue_vs_pgqueuer"] = round(m["enqueue_per_s"] / ref["enqueue_per_s"], 3)
        out.append(row)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--only", default=",".join(SYSTEMS),
                        help="systems to run, comma-separated")
    parser.add_argument("--prefetch1", type=int, default=100,
                        help="jobs the worker of ours1p holds leased ahead of its slots (100)")
    parser.add_argument("--prefetch10", type=int, default=20,
                        help="jobs each worker of ours10p holds leased ahead (20)")
    parser.add_argument("--out", type=Path, help="write the medians and every round as JSON")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="event loop of the asyncio clients, the same for every system")
    args = parser.parse_args()
    if not (1 <= args.rounds <= 10 and 100 <= args.jobs <= 100_000):
        parser.error("--rounds must be 1..10 and --jobs 100..100000")
    for flag in ("prefetch1", "prefetch10"):
        if not 1 <= getattr(args, flag) <= 1000:
            parser.error(f"--{flag} must be 1..1000, not {getattr(args, flag)}")
    unknown = set(args.only.split(",")) - set(SYSTEMS)
    if unknown:
        parser.error(f"--only: unknown systems {sorted(unknown)}")
    return args


async def main(args: argparse.Namespace) -> None:
    only = set(args.only.split(","))
    with endpoints(load_settings(), keep_running=True) as settings:
        python = peers_python(settings.data_dir) if only & {"pgqueuer", "dramatiq"} else None
        rows: dict[str, list[dict[str, Any]]] = {}
        for r in range(args.rounds):
            runs = []
            if "ours1" in only:
                runs.append(await ours(settings, args.jobs, 1, 100))
            if "ours10" in only:
                runs.append(await ours(settings, args.jobs, 10, 10))
            if "ours1p" in only:
                runs.append(await ours(settings, args.jobs, 1, 100, args.prefetch1))
            if "ours10p" in only:
                runs.append(await ours(settings, args.jobs, 10, 10, args.prefetch10))
            if "pgqueuer" in only and python:
                runs.append(await pgqueuer(python, settings, args.jobs))
            if "dramatiq" in only and python and settings.redis_url:
                runs.append(_peer(python, "peer_dramatiq.py",
                                  {"PEER_REDIS_URL": settings.redis_url}, args.jobs))
            for run in runs:
                rows.setdefault(run["system"], []).append(run)
                handlers = run.get("drain_handlers_jobs_s")
                print(f"round {r + 1}: {run['system']:<18} drain {run['drain_jobs_s']:8.0f}/s"
                      f"  enqueue {run['enqueue_per_s']:7.0f}/s"
                      f"  p99 {run['enqueue_p99_ms']:6.2f} ms"
                      f"  CPU/job {run['cpu_total_us']:4.0f} us (PostgreSQL"
                      f" {run['cpu_postgres_us']:.0f}, Valkey {run['cpu_valkey_us']:.0f},"
                      f" clients {run['cpu_clients_us']:.0f})"
                      + (f"  (handlers' span: {handlers:.0f}/s)" if handlers else ""),
                      flush=True)
    result = table(rows)
    print(f"event loop of the asyncio clients: {args.loop}")
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"loop": args.loop, "medians": result, "rounds": rows},
                                       indent=2))


if __name__ == "__main__":
    ARGS = parse_args()
    LOOP[0] = ARGS.loop
    if ARGS.loop == "uvloop":
        import uvloop

        uvloop.run(main(ARGS))
    else:
        asyncio.run(main(ARGS))
