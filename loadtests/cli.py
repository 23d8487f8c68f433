"""The `jobharness` console script: the core's commands plus the harness's (`run`). Worker
processes start through `python -m core.cli.main`, so they never import the harness."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.cli.main import main as core_main
from core.errors import JobHarnessError
from core.settings import Settings


def _progress_view(console: Any) -> tuple[Any, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]{task.fields[phase]:<13}"), BarColumn(),
                   TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console)
    return bar, None


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from chaos.drill import DrillError
    from core.cli.output import run_async
    from core.service.runtime import endpoints
    from loadtests.run import Progress, Run, RunOptions
    from loadtests.scenario import Scenario, ScenarioError

    err, out = Console(stderr=True), Console()
    opts = RunOptions(scenario=args.scenario, workers=args.workers, prefetch=args.prefetch,
                      jobs=args.jobs,
                      rate_per_s=args.rate, seed=args.seed,
                      out=Path(args.out), targeted=args.target is not None,
                      locust_workers=args.locust_workers, memory=args.memory,
                      cleanup=args.cleanup, drill=args.drill, predictor=args.predictor,
                      intensity=args.intensity, api_replicas=args.api_replicas,
                      holdout=args.holdout)
    bar, _ = _progress_view(err)
    task: dict[str, Any] = {}

    def on_progress(p: Progress, s: Scenario, elapsed: float) -> None:
        # under a drill the load goes on until the drill settles: the total grows with it
        total = max(s.jobs, p.created)
        stats = (f"created {p.created}{'' if opts.drill else f'/{s.jobs}'}  done {p.done}  "
                 f"dead {p.dead}  workers {p.workers}")
        if "id" not in task:
            task["id"] = bar.add_task("run", total=total, phase=p.phase, stats=stats)
        bar.update(task["id"], total=total, completed=p.done + p.dead, phase=p.phase,
                   stats=stats)

    try:
        with endpoints(settings, keep_running=args.target is not None) as resolved, bar:
            run = Run(resolved, opts, on_progress)
            if opts.drill == "random" and run.drill is not None:
                from chaos.nemesis import schedule

                err.print(f"{run.drill.name}: {run.drill.description}")
                for line in schedule(run.drill):
                    err.print(line, highlight=False)
            verdict = run_async(run.execute())
    except (ScenarioError, DrillError) as exc:
        raise JobHarnessError(str(exc)) from exc
    from reports.build import build_report

    verdict["report"] = build_report(run.dir)["report"]
    if args.json:
        from core.cli.output import print_json

        print_json(verdict)
    else:
        print_run(out, verdict, run.dir)
    return 0 if verdict["passed"] else 1


def print_run(out: Any, verdict: dict[str, Any], run_dir: Path) -> None:
    """A run's verdict as a person reads it: the checks, the faults and their recovery, the
    figures that matter, the timings, and where the report is."""
    from chaos.summary import checks_table, drill_summary, failures, verdict_line

    out.print(checks_table(verdict["slos"], verdict["invariants"], title=verdict["run_id"]))
    if verdict.get("drill"):
        out.print(drill_summary(verdict["drill"]))
    for line in failures(verdict["invariants"]):
        out.print(line)
    figs, t = verdict["figures"], verdict["timings"]
    by_check = {c["name"]: c["violations"] for c in verdict["invariants"]}
    e2e = figs.get("e2e_p99_ms")
    out.print(f"{figs['jobs']} jobs in {figs['wall_s']:.1f} s ({figs['throughput_jobs_s']} "
              f"jobs/s), end-to-end p99 {'-' if e2e is None else f'{e2e:.0f} ms'}; "
              f"lost {by_check.get('lost_jobs', '-')}, completed twice "
              f"{by_check.get('completed_twice', '-')}")
    out.print("start-up {startup_s:.1f} s, load {load_s:.1f} s, drain {drain_s:.1f} s".format(
        **{k: t.get(k, 0.0) for k in ("startup_s", "load_s", "drain_s")}))
    out.print(f"report: {run_dir / 'report' / 'report.html'}")
    out.print(f"run folder: {run_dir} (Locust's own report: locust.html)")
    out.print(verdict_line(verdict["passed"], verdict["breaches"]))


def extend(sub: Any, common: argparse.ArgumentParser) -> None:
    from chaos.cli import add_parsers as add_chaos
    from loadtests.bench.cli import add_parser as add_bench
    from loadtests.demo import add_parser as add_demo
    from loadtests.scenario import available
    from predictor.cli import add_parsers as add_predictor
    from reports.cli import add_parser as add_report

    add_bench(sub, common)
    add_demo(sub, common)
    add_chaos(sub, common)
    add_predictor(sub, common)
    add_report(sub, common)
    p = sub.add_parser("run", parents=[common],
                       help="load scenario -> drain -> invariant checks -> SLO verdict")
    p.add_argument("scenario", help=f"one of {', '.join(available())}, or a YAML file")
    p.add_argument("--workers", type=int, help="override the scenario's worker processes")
    p.add_argument("--prefetch", type=int,
                   help="override the jobs each worker holds leased ahead of its slots")
    p.add_argument("--jobs", type=int, help="override the scenario's job count")
    p.add_argument("--rate", type=float, help="override the open model's creates per second")
    p.add_argument("--seed", type=int, help="override the scenario's seed (load and drill draws)")
    p.add_argument("--out", default="out/runs", help="where run folders go (out/runs)")
    p.add_argument("--locust-workers", type=int, default=0,
                   help="run Locust as a master and N worker processes")
    p.add_argument("--memory", action="store_true",
                   help="emit state-memory events during the run")
    p.add_argument("--drill", help="a chaos drill (name or YAML file) to run under the load; "
                   "`random`: one drawn from --seed (chaos/nemesis.py)")
    p.add_argument("--intensity", choices=["low", "high"], default="low",
                   help="of --drill random: 5 faults one at a time, or 10 overlapping")
    p.add_argument("--predictor", default="off",
                   help="worker-health policy for proactive replacement: off (default), "
                        "default (the shipped policy), hand-rule, learnt (the learnt model "
                        "kept in predictor/) or a model file")
    p.add_argument("--holdout", type=float, default=0.1,
                   help="with --predictor: the share of workers scored but never acted on "
                        "(0-0.9; 0.5 makes an A/B of treated and hold-out workers in one run)")
    p.add_argument("--api-replicas", type=int, default=1,
                   help="API processes (1-8); Locust deals its users out over them, and a "
                        "drill may restart one (restart_process process: api)")
    p.add_argument("--cleanup", action="store_true",
                   help="drop the run's schema and Redis keys after writing the run folder")
    p.set_defaults(func=cmd_run, needs_settings=True)


def main(argv: Sequence[str] | None = None) -> int:
    return core_main(argv, extend=extend)


if __name__ == "__main__":
    sys.exit(main())
