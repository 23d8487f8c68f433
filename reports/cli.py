"""`jobharness report RUN_DIR` and `jobharness report compare BASE CANDIDATE`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from core.contract import runfolder
from core.errors import JobHarnessError


def cmd_report(args: argparse.Namespace) -> int:
    from core.cli.output import print_json

    try:
        if args.run_dir == "compare":
            from reports.compare import compare

            if len(args.more) != 2:
                raise JobHarnessError("usage: jobharness report compare BASE CANDIDATE")
            base, cand = (Path(p) for p in args.more)
            result = compare(base, cand, cand / runfolder.REPORT)
            print_json(result)
            return 1 if result["regressions"] else 0
        from reports.build import build_report

        print_json(build_report(Path(args.run_dir)))
    except FileNotFoundError as exc:
        raise JobHarnessError(str(exc)) from exc
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser("report", help="latency report of a run folder (HTML, Markdown, PNG)")
    r.add_argument("run_dir", help="a run folder, or `compare BASE CANDIDATE`")
    r.add_argument("more", nargs="*", help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_report)
