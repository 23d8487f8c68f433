"""`jobharness predictor`: dataset, train, evaluate, export (a target's tables as a folder)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.contract import runfolder
from core.errors import JobHarnessError
from core.settings import Settings

DEFAULT_OUT = Path("out/models/worker-health.skops")


def _dataset(paths: list[str], horizon_s: float) -> tuple[Any, list[dict[str, str]]]:
    from predictor.dataset import DatasetError, build

    try:
        return build([Path(p) for p in paths], horizon_s=horizon_s)
    except (DatasetError, OSError) as exc:
        raise JobHarnessError(str(exc)) from exc


def cmd_dataset(args: argparse.Namespace) -> int:
    df, _ = _dataset(args.runs, args.horizon_s)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(f"{len(df)} rows -> {out}")
    print(df.groupby(["run", "label"], observed=True).size().unstack(fill_value=0).to_string())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from predictor.card import write_card
    from predictor.model import save
    from predictor.train import train

    console = Console(stderr=True)
    if args.k < 1:
        raise JobHarnessError("--k must be at least 1")
    features = _features(args.features)
    with console.status("building the dataset"):
        df, sources = _dataset(args.runs, args.horizon_s)
    with console.status(f"training on {len(df)} rows ({df['run'].nunique()} runs)"):
        try:
            model, meta = train(df, k=args.k, seed=args.seed, horizon_s=args.horizon_s,
                                features=features)
        except ValueError as exc:
            raise JobHarnessError(str(exc)) from exc
    meta["sources"] = sources
    if args.data_command:
        meta["data_command"] = args.data_command
    meta["trained_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["command"] = "jobharness predictor train " + " ".join(
        shlex.quote(a) for a in (sys.argv[3:] if len(sys.argv) > 3 else []))
    out = Path(args.out)
    save(model, meta, out)
    md, _ = write_card(meta, out)
    print(f"model -> {out}\ncard  -> {md}")
    _print_summary(meta.get("validation"), "validation")
    return 0


def _features(spec: str) -> tuple[str, ...]:
    from predictor.features import feature_set

    try:
        return feature_set(spec)
    except ValueError as exc:
        raise JobHarnessError(f"--features: {exc}") from exc


def _at(at: dict[str, Any]) -> str:
    text = (f"precision {at['precision']} {list(at['precision_ci'] or [])}, "
            f"recall {at['recall']} {list(at['recall_ci'] or [])}")
    if at.get("horizon"):
        text += f" (horizon-only label: {_at(at['horizon'])})"
    return text


def _print_summary(res: dict[str, Any] | None, title: str) -> None:
    if not res:
        print(f"{title}: not available (needs at least three runs with failures: each fold is "
              "scored at a threshold chosen on the folds before it)")
        return
    ev = res["events"]
    g = ev["gradual"]
    lead = (g.get("lead_s") or {}).get("p50")
    print(f"{title}: failing PR-AUC {res['rows']['pr_auc_failing']}, gradual recall "
          f"{g['recall']} ({g['caught']}/{g['failures']}), firing precision {ev['precision']}, "
          f"median lead {lead} s, false replacements {ev['false_replacements']} in "
          f"{ev['healthy_worker_hours']} worker-hours ({ev['false_per_100_worker_hours']} per "
          f"100, 95 % upper bound {ev.get('false_per_100_upper95')})")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from predictor.baselines import HAND_RULE_K, HAND_RULE_TEXT, at_threshold, hand_rule_scores
    from predictor.dataset import used_in_training
    from predictor.model import ModelError
    from predictor.policy import Policy
    from predictor.shipped import load_policy
    from predictor.train import evaluate, event_f1, event_metrics, trainable

    try:
        model = load_policy(args.model)
    except ModelError as exc:
        raise JobHarnessError(str(exc)) from exc
    used = used_in_training(model.meta, [Path(r) for r in args.runs])
    if used and not args.in_sample:
        raise JobHarnessError(
            f"these runs trained {model.path.name}: {', '.join(used)}; scores on them say "
            "nothing about data it never saw (give --in-sample to score them anyway, "
            "labelled as such)")
    if used and args.update_card:
        raise JobHarnessError("--update-card records a held-out evaluation: it cannot be "
                              f"made on runs that trained the model ({', '.join(used)})")
    horizon = float(model.meta.get("horizon_s", 30.0))
    df, sources = _dataset(args.runs, horizon)
    policy = Policy(threshold=args.threshold or model.threshold, k=args.k or model.k,
                    holdout=0)
    result = evaluate(model.pipeline, df, policy, horizon)
    result["event_f1"] = round(event_f1(result["events"]), 3)
    rule = model.meta.get("kind") == "rule"
    if not rule:  # the hand rule beside the model, on the same rows
        hand_rows = hand_rule_scores(df)
        hand = event_metrics(hand_rows, Policy(threshold=0.5, k=HAND_RULE_K, holdout=0),
                             horizon)
        result["hand_rule"] = {"events": hand, "event_f1": round(event_f1(hand), 3),
                               "at_threshold": at_threshold(trainable(hand_rows), 0.5),
                               "rule": HAND_RULE_TEXT}
    result["runs"] = [s["run"] for s in sources]
    result["policy"] = {"threshold": policy.threshold, "k": policy.k}
    result["in_sample"] = [Path(u).name for u in used]
    if args.json:
        print(json.dumps(result, indent=2))
        return _update_card(args, model, result)
    name = "hand rule" if rule else "model"
    _print_summary(result, f"{name}, " + ("in-sample (runs it was trained on)" if used
                                         else "held-out"))
    print(f"rows at the action threshold (failing): {name} {_at(result['at_threshold'])}")
    if not rule:
        print(f"event F1: model {result['event_f1']}, hand rule "
              f"{result['hand_rule']['event_f1']} (caught {hand['gradual']['caught']}/"
              f"{hand['gradual']['failures']}, firing precision {hand['precision']}); rows at "
              f"the threshold: hand rule {_at(result['hand_rule']['at_threshold'])}")
    else:
        print(f"event F1: {result['event_f1']}")
    return _update_card(args, model, result)


def _update_card(args: argparse.Namespace, model: Any, result: dict[str, Any]) -> int:
    from predictor.card import write_card

    if args.update_card:
        result["command"] = "jobharness predictor evaluate " + " ".join(
            shlex.quote(a) for a in (sys.argv[3:] if len(sys.argv) > 3 else []))
        meta = {**model.meta, args.card_section: result}
        write_card(meta, model.path)
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from predictor.card import write_card
    from predictor.dataset import DatasetError
    from predictor.model import ModelError, save
    from predictor.policy import Policy
    from predictor.retrain import Collect, check_test_set, collect, decide, judge
    from predictor.shipped import load_policy
    from predictor.train import train

    if not 0 <= args.collect <= 50:
        raise JobHarnessError("--collect must be 0..50 runs")
    if args.k < 1:
        raise JobHarnessError("--k must be at least 1")
    features = _features(args.features)
    current = None
    if args.current != "none":
        try:
            current = load_policy(args.current)
        except ModelError as exc:
            raise JobHarnessError(f"--current: {exc}") from exc
    runs, tests = [Path(r) for r in args.runs], [Path(t) for t in args.test]
    steps = ["collect"] * args.collect + ["dataset", "train", "test", "write"]
    console = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  TextColumn("{task.fields[eta]}"), console=console) as bar:
        task = bar.add_task("retrain", total=len(steps), eta="")

        def step(text: str, left_s: float | None = None) -> None:
            bar.update(task, description=text,
                       eta=f"~{left_s / 60:.0f} min of runs left" if left_s else "")

        try:
            if args.collect:
                def on_run(done: int, text: str, left_s: float) -> None:
                    bar.update(task, completed=done)
                    step(f"collecting: {text}", left_s)
                made = collect(Collect(runs=args.collect, seed=args.seed, drill=args.drill,
                                       out=Path(args.collect_out)), on_run)
                runs += made
                bar.update(task, completed=args.collect)
            check_test_set(runs, tests)
            if len(runs) < 3:
                raise JobHarnessError(f"{len(runs)} training run(s): nested validation needs "
                                      "at least three (give more, or --collect N)")
            step("building the datasets")
            df, sources = _dataset([str(r) for r in runs], args.horizon_s)
            test_df, test_sources = _dataset([str(t) for t in tests], args.horizon_s)
            bar.advance(task)
            step(f"training on {len(df)} rows of {len(runs)} runs, with nested validation")
            model, meta = train(df, k=args.k, seed=args.seed, horizon_s=args.horizon_s,
                                features=features)
            bar.advance(task)
            step(f"scoring once on the frozen test set ({len(tests)} runs)")
            scores = judge(test_df, args.horizon_s, current=current,
                           new=(model, Policy(threshold=meta["threshold"], k=args.k, holdout=0)))
            bar.advance(task)
        except (DatasetError, ValueError) as exc:
            raise JobHarnessError(str(exc)) from exc
        ship, reasons = decide(scores)
        meta.update(sources=sources, trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    command="jobharness predictor retrain " + " ".join(
                        shlex.quote(a) for a in (sys.argv[3:] if len(sys.argv) > 3 else [])),
                    frozen_test={"sources": test_sources, "scores": scores,
                                 "current_model": args.current if current else None,
                                 "ship": ship, "reasons": reasons})
        if args.data_command:
            meta["data_command"] = args.data_command
        out = Path(args.out)
        save(model, meta, out)
        md, _ = write_card(meta, out)
        bar.advance(task)
        step("done")
    print(f"model -> {out}\ncard  -> {md}")
    _print_summary(meta.get("validation"), "validation (nested)")
    for line in reasons:
        print(f"  {line}")
    print(f"ship it: {'yes' if ship else 'no'}")
    return 0


async def _export(settings: Settings, out: Path) -> list[str]:
    from core.store.exports import export_tables
    from core.store.pools import create_pool

    pool = await create_pool(settings, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            return await export_tables(conn, out, only=(runfolder.WORKER_HEALTH, runfolder.WORKERS))
    finally:
        await pool.close()


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from core.cli.output import run_async
    from core.service.runtime import endpoints

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with endpoints(settings, keep_running=True) as resolved:
        written = run_async(_export(resolved, out))
    print(f"{', '.join(written)} -> {out} (a folder `predictor train` reads)")
    return 0


def cmd_ab(args: argparse.Namespace) -> int:
    from predictor.ab import ABError, load_runs, write

    try:
        runs = load_runs(Path(r) for r in args.runs)
    except (ABError, OSError, KeyError) as exc:
        raise JobHarnessError(f"A/B: {exc}") from exc
    summary = write(runs, Path(args.out))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print((Path(args.out) / "ab.md").read_text())
        print(f"written: {Path(args.out) / 'ab.json'}, {Path(args.out) / 'ab.md'}")
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    from predictor.card import write_card
    from predictor.model import ModelError
    from predictor.shipped import load_policy
    from predictor.soak import SoakError, soak_lines, soak_run, summarize

    try:
        runs = [soak_run(Path(r)) for r in args.runs]
        model = load_policy(args.model)
    except (SoakError, ModelError, OSError, KeyError) as exc:
        raise JobHarnessError(f"soak: {exc}") from exc
    other = [r["run"] for r in runs if r["model_trained_at"] != model.meta.get("trained_at")]
    if other:
        raise JobHarnessError(f"soak: {', '.join(other)} ran another model than "
                              f"{model.path.name} (trained {model.meta.get('trained_at')})")
    summary = {**summarize(runs), "per_run": runs,
               "command": "jobharness predictor soak " + " ".join(
                   shlex.quote(a) for a in (sys.argv[3:] if len(sys.argv) > 3 else []))}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for line in soak_lines(summary):
            print(line)
    if args.update_card:
        write_card({**model.meta, "soak": summary}, model.path)
    return 0


POLICIES = "`default` (the shipped policy), `hand-rule`, `learnt` or a model file"


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("predictor", parents=[common], help="the worker-failure predictor")
    ps = p.add_subparsers(dest="action", required=True)
    d = ps.add_parser("dataset", parents=[common], help="labelled rows of run folders as CSV")
    d.add_argument("runs", nargs="+")
    d.add_argument("--out", default="out/dataset.csv")
    d.add_argument("--horizon-s", type=float, default=30.0)
    d.set_defaults(func=cmd_dataset, needs_settings=False)
    t = ps.add_parser("train", parents=[common], help="train a model on run folders")
    t.add_argument("runs", nargs="+", help="run folders, oldest first is not required")
    t.add_argument("--out", default=str(DEFAULT_OUT), help=f"model file ({DEFAULT_OUT})")
    t.add_argument("--k", type=int, default=5, help="consecutive failing scores to act (5)")
    t.add_argument("--horizon-s", type=float, default=30.0, help="failing = fails within")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data-command", help="how the run folders were made (for the card)")
    t.add_argument("--features", default="model",
                   help="what the model learns from: model (every feature but the absolute "
                        "levels), all, base, or names joined by commas (model,rss_mb)")
    t.set_defaults(func=cmd_train, needs_settings=False)
    e = ps.add_parser("evaluate", parents=[common], help="score held-out run folders")
    e.add_argument("model", help=f"a policy: {POLICIES}")
    e.add_argument("runs", nargs="+")
    e.add_argument("--threshold", type=float, help="override the model's threshold")
    e.add_argument("--k", type=int, help="override the model's k")
    e.add_argument("--update-card", action="store_true",
                   help="write the result into the model card as its held-out evaluation")
    e.add_argument("--as", dest="card_section", choices=["evaluation", "unseen"],
                   default="evaluation",
                   help="with --update-card: the card's held-out evaluation, or its unseen "
                        "condition (a drill never trained on)")
    e.add_argument("--in-sample", action="store_true",
                   help="score runs the model was trained on (refused otherwise), labelled so")
    e.set_defaults(func=cmd_evaluate, needs_settings=False)
    r = ps.add_parser("retrain", parents=[common],
                      help="collect or take runs, train, validate, test once, say whether to ship")
    r.add_argument("runs", nargs="*", help="training run folders (more with --collect)")
    r.add_argument("--test", nargs="+", default=[], required=True,
                   help="the frozen test set: run folders never used in training")
    r.add_argument("--collect", type=int, default=0,
                   help="also make N training runs here with the drill (0)")
    r.add_argument("--drill", default="degrading-workers", help="drill of collected runs")
    r.add_argument("--seed", type=int, default=100, help="first seed of collected runs (100)")
    r.add_argument("--collect-out", default="out/retrain", help="where collected runs go")
    r.add_argument("--current", default="default",
                   help=f"the policy to compare with: {POLICIES}, or "
                   "`none`")
    r.add_argument("--out", default=str(DEFAULT_OUT), help=f"model file ({DEFAULT_OUT})")
    r.add_argument("--k", type=int, default=5, help="consecutive failing scores to act (5)")
    r.add_argument("--horizon-s", type=float, default=30.0, help="failing = fails within")
    r.add_argument("--features", default="model",
                   help="what the model learns from: model (every feature but the absolute "
                        "levels), all, base, or names joined by commas (model,rss_mb)")
    r.add_argument("--data-command", help="how the given run folders were made (for the card)")
    r.set_defaults(func=cmd_retrain, needs_settings=False)
    a = ps.add_parser("ab", parents=[common],
                      help="treated against hold-out workers over runs made with --holdout")
    a.add_argument("runs", nargs="+", help="run folders made with --predictor and --holdout, "
                   "and earlier ab.json files (their runs pooled with these)")
    a.add_argument("--out", default="out/ab", help="where ab.json and ab.md go (out/ab)")
    a.set_defaults(func=cmd_ab, needs_settings=False)
    so = ps.add_parser("soak", parents=[common],
                       help="false alarms of the model in no-fault runs (fleet-soak)")
    so.add_argument("runs", nargs="+", help="no-fault run folders made with --predictor")
    so.add_argument("--model", default="default",
                    help=f"the policy the runs were made with: {POLICIES}")
    so.add_argument("--update-card", action="store_true",
                    help="write the result into that model's card")
    so.set_defaults(func=cmd_soak, needs_settings=False)
    x = ps.add_parser("export", parents=[common],
                      help="a target's health samples and workers as a folder to train on")
    x.add_argument("out")
    x.set_defaults(func=cmd_export, needs_settings=True)
