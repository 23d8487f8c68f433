"""Output and plumbing shared by every command: results to stdout (JSON for scripts), Rich
consoles for progress on stderr, settings from the common flags, and the event loop."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from core.infra.serving import run_async
from core.settings import Settings, load_settings

__all__ = ["EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "console", "print_json", "run_async",
           "settings_from_args"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def console(stderr: bool = False) -> Any:
    """A Rich console (stderr for progress, stdout for results)."""
    from rich.console import Console

    return Console(stderr=stderr)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the common flags (> environment > --target file > defaults)."""
    flags = {
        "pg_dsn": args.pg_dsn,
        "redis_url": args.redis_url,
        "schema": args.schema,
        "prefix": args.prefix,
        "data_dir": Path(args.data_dir) if args.data_dir else None,
        "qdrant_url": getattr(args, "qdrant_url", None),
    }
    return load_settings(flags, target=Path(args.target) if args.target else None)
