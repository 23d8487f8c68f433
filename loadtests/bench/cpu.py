"""CPU time a drain costs each part of a system, from two snapshots of every process of
interest (psutil): PostgreSQL's processes, Valkey, and the system's own client processes (a
worker pool, a peer queue's process). Taken while every one of them is alive, at the start of
the window and at its end, so nothing is sampled and nothing is missed but a process that
starts and exits inside the window (none does in a drain: its workers and their connections
outlive it). A process that appears inside the window is counted from zero.

Per job is the CPU in the window over the jobs completed in it (the caller counts them at
both ends): a window that opens after the first jobs ran does not inflate the figure."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import psutil

Snapshot = dict[tuple[int, float], tuple[str, float]]  # (pid, start time) -> (part, CPU s)
PARTS = ("postgres", "valkey", "clients")


def _servers() -> Iterable[tuple[str, psutil.Process]]:
    for p in psutil.process_iter(["name"]):
        name = p.info["name"] or ""
        if "postgres" in name:
            yield "postgres", p
        elif "valkey" in name:
            yield "valkey", p


class CpuMeter:
    """CPU per completed job of PostgreSQL, Valkey and the clients `clients()` names."""

    def __init__(self, clients: Callable[[], Iterable[psutil.Process]]) -> None:
        self._clients = clients
        self._start: Snapshot = {}
        self._end: Snapshot = {}
        self._jobs = 0

    def snapshot(self) -> Snapshot:
        procs = [*_servers(), *(("clients", p) for p in self._clients())]
        out: Snapshot = {}
        for part, p in procs:
            try:
                t = p.cpu_times()
                out[(p.pid, p.create_time())] = (part, t.user + t.system)
            except psutil.Error:  # gone meanwhile: it ran nothing in the window
                continue
        return out

    def start(self, done: int) -> None:
        """The window opens with `done` jobs completed."""
        self._start, self._jobs = self.snapshot(), -done

    def stop(self, done: int) -> None:
        """The window closes with `done` jobs completed."""
        self._end = self.snapshot()
        self._jobs += done

    def per_job_us(self) -> dict[str, float]:
        """Microseconds of CPU per job completed in the window, by part."""
        if not self._end or self._jobs <= 0:
            raise RuntimeError("the CPU window was not opened and closed around completed jobs")
        spent = dict.fromkeys(PARTS, 0.0)
        for key, (part, cpu) in self._end.items():
            spent[part] += cpu - self._start.get(key, (part, 0.0))[1]
        return {part: round(s / self._jobs * 1e6, 1) for part, s in spent.items()}


def descendants() -> list[psutil.Process]:
    """This process's children and theirs (a supervisor's worker processes)."""
    return psutil.Process().children(recursive=True)
