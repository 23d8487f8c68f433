"""What a policy name means wherever one is taken (`supervisor --model`, `run --predictor`,
`predictor evaluate|soak|retrain --current`):

- `default`: the policy this version ships, SHIPPED: the one that did best on the unseen
  condition with the evidence to back it (docs/predictor.md, "Which policy ships");
- `hand-rule`: the hand rule (predictor/baselines.py), loaded as a model is, with a card of its
  own (predictor/hand-rule.md: its unseen evaluation, A/B and soak);
- `learnt`: the learnt model kept in predictor/ (learnt-model.skops and its card);
- anything else: a model file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from predictor.baselines import HAND_RULE, HAND_RULE_K, HAND_RULE_TEXT, RulePipeline
from predictor.model import LoadedModel, ModelError, load

HERE = Path(__file__).parent
HAND_RULE_NAME = "hand-rule"
LEARNT_NAME = "learnt"
SHIPPED = HAND_RULE_NAME
LEARNT_MODEL = HERE / "learnt-model.skops"
HAND_RULE_CARD = HERE / "hand-rule"  # its card: hand-rule.md and hand-rule.card.json
NAMES = ("default", HAND_RULE_NAME, LEARNT_NAME)


def resolve(name: str) -> str:
    """`default` as the policy it stands for; other names unchanged."""
    return SHIPPED if name == "default" else name


def is_named(name: str) -> bool:
    """Whether `name` is one of the policies shipped in predictor/ (not a file path)."""
    return name in NAMES


def load_policy(name: str) -> LoadedModel:
    """The policy `name` means (see the module text); ModelError if it cannot be used."""
    name = resolve(name)
    if name == HAND_RULE_NAME:
        return hand_rule()
    return load(LEARNT_MODEL if name == LEARNT_NAME else name)


def hand_rule() -> LoadedModel:
    """The hand rule as a loaded model: its policy (fire at 0.5 after HAND_RULE_K rounds) and
    the evidence its card holds."""
    meta: dict[str, Any] = {}
    card = HAND_RULE_CARD.with_suffix(".card.json")
    if card.is_file():
        try:
            meta = json.loads(card.read_text())
        except ValueError as exc:
            raise ModelError(f"{card} is not valid JSON: {exc}") from exc
    meta.update({"kind": "rule", "rule": HAND_RULE_TEXT, "trained_at": "hand rule (not trained)",
                 "threshold": 0.5, "k": HAND_RULE_K, "horizon_s": 30.0,
                 "features": list(HAND_RULE),
                 # its windows and the 2.5 s gap assume a sample every second
                 "sampling_interval_s": 1.0})
    return LoadedModel(RulePipeline(), meta, HAND_RULE_CARD)  # type: ignore[arg-type]
