"""The names of the files a run folder holds (`jobharness run`), and of the state files
processes leave in their data folder for others to find, written down once. A reader of a run
folder (reports, the predictor's dataset) and its writer (the run) take them from here."""

from __future__ import annotations

from pathlib import Path

# what the run writes
SCENARIO = "scenario.yaml"  # the scenario as run (overrides applied)
CONFIG = "config.json"  # schema, prefix, options of the run
SAMPLES = "samples.csv"  # one row a second: job counts, queue depths, workers, stores up
VERDICT = "verdict.json"  # SLOs, invariants, drill journal and recovery, figures
RAW = "raw"  # every request Locust made (requests-*.csv), accepted ids, budget markers
LOGS = "logs"  # one log file per child process
STATE = "state"  # the run's data folder (supervisor and memory-owner state files)
LOCUST_CSV = "locust"  # prefix of Locust's own CSV files
LOCUST_HTML = "locust.html"
PREDICTIONS = "predictions.csv"  # every verdict of the worker-health model (with --predictor)
PREDICTIONS_META = "predictions.json"  # the model, threshold and k those verdicts used
REPORT = "report"  # the report folder (report.html, summary.md, summary.json, figures)
# exported from the stores after the drain (core.contract.observe.EXPORTS)
JOBS = "jobs.csv"
EXECUTIONS = "executions.csv"
WORKER_HEALTH = "worker_health.csv"
WORKERS = "workers.csv"
DEAD_LETTER_QUEUE = "dead_letter_queue.csv"

# what processes leave in a data folder
MEMORY_OWNER_STATE = "memory-owner.json"  # the state-memory owner's URL and pid


def supervisor_state(data_dir: Path, name: str) -> Path:
    """Where supervisor `name` says how to reach its control surface."""
    return data_dir / f"supervisor-{name}.json"
