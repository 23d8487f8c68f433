"""Job handlers: plain callables registered by job type, plus the built-in synthetic ones
that the load scenarios use (noop, sleep, cpu, flaky, leak, hang)."""

from __future__ import annotations

import asyncio
import importlib
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from core.errors import ConfigError

Handler = Callable[[dict[str, Any]], Awaitable[Any] | Any]


class HandlerError(Exception):
    """A handler failed on purpose (synthetic failure)."""


async def noop(payload: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


async def sleep(payload: dict[str, Any]) -> dict[str, Any]:
    """Sleep `ms`, or a draw from {"dist": "uniform"|"exp"|"lognormal", ...} in ms."""
    ms = _bounded_ms("sleep duration", _duration_ms(payload))
    await asyncio.sleep(ms / 1000)  # the job's timeout cancels it
    return {"slept_ms": ms}


def _duration_ms(payload: dict[str, Any]) -> float:
    dist = payload.get("dist")
    rng = random.Random(payload.get("seed"))
    if dist is None:
        return float(payload.get("ms", 10))
    if dist == "uniform":
        return rng.uniform(float(payload.get("min_ms", 0)), float(payload.get("max_ms", 100)))
    if dist == "exp":
        return rng.expovariate(1.0 / float(payload.get("mean_ms", 50)))
    if dist == "lognormal":
        return rng.lognormvariate(float(payload.get("mu", 3.0)), float(payload.get("sigma", 0.5)))
    raise HandlerError(f"unknown sleep distribution {dist!r}")


MAX_SYNTHETIC_MS = 600_000.0  # a synthetic job's own duration: at most 10 minutes


def _bounded_ms(name: str, value: Any) -> float:
    """A synthetic duration: a number from 0 to MAX_SYNTHETIC_MS (NaN and Infinity are not)."""
    try:
        ms = float(value)
    except (TypeError, ValueError):
        raise HandlerError(f"{name} must be a number of milliseconds") from None
    if not 0 <= ms <= MAX_SYNTHETIC_MS:
        raise HandlerError(f"{name} must be from 0 to {MAX_SYNTHETIC_MS:g} ms")
    return ms


def _burn(ms: float, stop: threading.Event) -> int:
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end and not stop.is_set():
        n += 1
    return n


async def cpu(payload: dict[str, Any]) -> dict[str, Any]:
    """Burn `ms` of CPU in a thread (the event loop keeps heartbeating). The job's timeout
    stops it: the thread checks a flag the cancellation sets, so a timed-out job does not go
    on burning a worker's CPU."""
    ms = _bounded_ms("cpu.ms", payload.get("ms", 10))
    stop = threading.Event()
    try:
        loops = await asyncio.to_thread(_burn, ms, stop)
    except asyncio.CancelledError:
        stop.set()
        raise
    return {"burned_ms": ms, "loops": loops}


async def flaky(payload: dict[str, Any]) -> dict[str, Any]:
    """Fail with probability `p` (seedable with `seed` + attempt for repeatable runs)."""
    p = float(payload.get("p", 0.5))
    seed = payload.get("seed")
    rng = random.Random(f"{seed}:{payload.get('_attempt', 0)}") if seed is not None else random
    if payload.get("ms"):
        await asyncio.sleep(float(payload["ms"]) / 1000)
    if rng.random() < p:
        raise HandlerError(f"flaky failure (p={p})")
    return {"ok": True}


_LEAKED: list[bytes] = []


async def leak(payload: dict[str, Any]) -> dict[str, Any]:
    """Keep `kb` KiB per job alive for the life of the process (a memory leak)."""
    kb = int(payload.get("kb", 256))
    _LEAKED.append(bytes(kb * 1024))
    return {"leaked_kb_total": sum(len(b) for b in _LEAKED) // 1024}


async def hang(payload: dict[str, Any]) -> None:
    """Never return (until cancelled or timed out)."""
    await asyncio.Event().wait()


BUILTIN_HANDLERS: dict[str, Handler] = {
    "noop": noop, "sleep": sleep, "cpu": cpu, "flaky": flaky, "leak": leak, "hang": hang,
}


def load_handler(path: str) -> Handler:
    """Load a user handler from 'package.module:function'."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"handler {path!r} must look like 'package.module:function'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load handler {path!r}: {exc}") from exc
    if not callable(obj):
        raise ConfigError(f"handler {path!r} is not callable")
    return obj  # type: ignore[no-any-return]


ENTRY_POINT_GROUP = "jobharness.handlers"


def build_registry(extra: Mapping[str, str] | None = None, *,
                   synthetic: bool = True) -> dict[str, Handler]:
    """Built-ins (`noop` only unless `synthetic`), then handlers installed under the
    `jobharness.handlers` entry-point group (name = job type), then user handlers given as
    {job_type: 'module:function'}."""
    from importlib.metadata import entry_points

    registry: dict[str, Handler] = dict(BUILTIN_HANDLERS) if synthetic else {"noop": noop}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            registry[ep.name] = ep.load()
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot load handler entry point {ep.name!r}: {exc}") from exc
    for job_type, path in (extra or {}).items():
        registry[job_type] = load_handler(path)
    return registry
