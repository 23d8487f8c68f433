"""The scoring port the worker-health predictor plugs into: all the supervisor knows of it.
`predictor.serve.LivePredictor` implements it; `jobharness supervisor --model` wires the two,
loading scikit-learn only then (core never imports it)."""

from __future__ import annotations

from typing import Any, Protocol


class Predictor(Protocol):
    """What the supervisor needs of a predictor (predictor.serve.LivePredictor)."""

    async def refresh(self, pool: Any, worker_ids: list[str]) -> float: ...
    def score(self, now: float) -> list[Any]: ...
    def note_action(self, now: float, wid: str, action: str) -> None: ...
    def forget(self, wid: str) -> None: ...
    def close(self) -> None: ...
