"""Worker processes as the supervisor starts them: forked from a fork server that has the
worker's modules imported already (the default: a start costs a fork and two connections, and
the imported code is shared copy-on-write), or a fresh `python -m core.cli worker` interpreter
each. Either way the supervisor sees the same small process interface (`Child`)."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.process
import os
import signal
import sys
from pathlib import Path
from typing import Any

from core.worker.process import WorkerOptions, forked_worker_main

SPAWN_MODES = ("forkserver", "exec")


class ForkedProcess:
    """A worker forked by the multiprocessing fork server, with the small part of the
    asyncio.subprocess.Process interface the supervisor uses."""

    def __init__(self, proc: multiprocessing.process.BaseProcess) -> None:
        self._proc = proc
        self.pid = int(proc.pid or 0)

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode  # negative: killed by that signal, as asyncio reports

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        """Wait for the exit without polling: the process's sentinel becomes readable."""
        if self.returncode is None:
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()
            fd = self._proc.sentinel

            def readable() -> None:
                if not exited.done():
                    exited.set_result(None)

            loop.add_reader(fd, readable)
            try:
                await exited
            finally:
                loop.remove_reader(fd)
            self._proc.join()
        return int(self._proc.exitcode or 0)


Child = asyncio.subprocess.Process | ForkedProcess
_FORKSERVER: Any = None


def forkserver() -> Any:
    """One fork server per supervisor process, with the worker's modules pre-imported."""
    global _FORKSERVER
    if _FORKSERVER is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["core.worker.process", "uvloop", "psutil"])
        _FORKSERVER = ctx
    return _FORKSERVER


async def start_worker(opts: WorkerOptions, env: dict[str, str], log_path: Path, *,
                       how: str = "forkserver") -> Child:
    """Start one worker process writing its output to `log_path`."""
    if how == "forkserver":
        child = forkserver().Process(target=forked_worker_main, name=opts.worker_id,
                                     args=(env, opts, str(log_path)), daemon=False)
        await asyncio.to_thread(child.start)
        return ForkedProcess(child)
    cmd = [sys.executable, "-m", "core.cli", "worker", "--id", opts.worker_id,
           "--concurrency", str(opts.concurrency), "--prefetch", str(opts.prefetch),
           "--drain-timeout-s", str(opts.drain_timeout_s),
           "--nice", str(opts.nice)]
    if opts.supervisor:
        cmd += ["--supervisor", opts.supervisor]
    if opts.capabilities:
        cmd += ["--capabilities", ",".join(opts.capabilities)]
    for job_type, path in (opts.handlers or {}).items():
        cmd += ["--handler", f"{job_type}={path}"]
    with open(log_path, "ab") as out:  # noqa: ASYNC230 (instant)
        return await asyncio.create_subprocess_exec(
            *cmd, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL, env=env)
