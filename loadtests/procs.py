"""Child processes of a run (API, supervisor, Locust): started with their output in the run
folder, stopped with SIGTERM and, past a deadline, SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path


class Child:
    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc

    @classmethod
    async def start(cls, name: str, args: list[str], *, env: dict[str, str], log: Path,
                    cwd: Path | None = None, python: bool = True) -> Child:
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", *args] if python else args
        with open(log, "ab") as out:  # noqa: ASYNC230 (instant)
            proc = await asyncio.create_subprocess_exec(
                *cmd, env={**os.environ, **env}, stdout=out, stderr=out, cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL)
        return cls(name, proc)

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def stop(self, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> int:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        return int(self.proc.returncode or 0)
