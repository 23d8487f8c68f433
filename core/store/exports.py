"""Run-folder exports: the contract's export queries (`core.contract.observe.EXPORTS`) copied
out as CSV files with PostgreSQL timestamps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import asyncpg

from core.contract.observe import EXPORTS


async def export_tables(conn: asyncpg.Connection, folder: Path,
                        only: Sequence[str] | None = None) -> list[str]:
    """Write every export (or those named in `only`) into `folder`; return the names
    written."""
    written = []
    for name in only or list(EXPORTS):
        await conn.copy_from_query(EXPORTS[name], output=folder / name, format="csv",
                                   header=True)
        written.append(name)
    return written
