"""Stage 3's category decision, learned from the evidence the stages gather.

The evidence for each category c (`CategoryEvidence`, one (C,) vector per block):
  parser  log of the parse's category probability (photo and mirror, both looks)
  vote    log(votes + ½) of the query's top global hits (`models.slle.CATEGORY_VOTERS`)
  fit     log of the best landmark residual of c's structures against the parse read as c
          (the likeliest categories only; the others get the worst one measured, and all
          zero when fewer than two could be measured)
  head    log of the category head's probability (`models.pattern.CategoryClassifier`: the
          second-look square at 160², closer than the parser sees), where one ships

The category's logit is Σ_b w[c, b] · evidence[b][c] + bias[c]. The hand-set rule that
served before (parser × vote^0.5 × fit^−1) is this net with w = (1, 0.5, −1) for every
category and no bias (`DecisionNet.rule`): an unweighed decider serves it exactly. Trained
by `flatlay train decision` on photos none of the stages learned from; the weights per
category (regularised towards their mean) let the decision learn which evidence to trust
where: the vote tells trousers from skirts, never a sweater from a long-sleeved top.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.config import model_config
from models.garments import CATEGORIES
from models.pretrained import load_weights, read_meta, save_weights

DECISION_WEIGHTS = Path(__file__).parent / "weights" / "decision-tiny"
# Every block of evidence there is; a decision's config names those it weighs.
BLOCKS = ("parser", "vote", "fit", "head")
RULE_BLOCKS = ("parser", "vote", "fit")


@dataclass
class CategoryEvidence:
    """What the stages know about the category, each block (C,) in CATEGORIES order; `head`
    (log of the category head's probabilities) only where the parser has a head."""

    parser: np.ndarray
    vote: np.ndarray
    fit: np.ndarray
    head: np.ndarray | None = None

    def stacked(self, blocks: tuple[str, ...] | list[str] = RULE_BLOCKS) -> np.ndarray:
        """(C, len(blocks)) float32."""
        missing = [b for b in blocks if getattr(self, b) is None]
        if missing:
            raise ValueError(f"no {', '.join(missing)} evidence: the decision weighs it, so "
                             "the parser needs the category head that ships beside it")
        return np.stack([getattr(self, b) for b in blocks], -1).astype(np.float32)


# Where a decision starts: the hand-set rule's weights (parser × vote^0.5 × fit^−1); a block
# the rule did not weigh starts at zero.
RULE = {"parser": 1.0, "vote": 0.5, "fit": -1.0}


class DecisionNet(nn.Module):
    """Evidence (N, C, B) of `blocks` → category logits (N, C): per-category weights of each
    block (shared by every category when not `per_category`) and a bias per category."""

    def __init__(self, per_category: bool = True, blocks: tuple[str, ...] | list[str] = RULE_BLOCKS,
                 start: dict[str, float] | None = None) -> None:
        super().__init__()
        unknown = set(blocks) - set(BLOCKS)
        if unknown:
            raise ValueError(f"unknown evidence {sorted(unknown)}; one of {', '.join(BLOCKS)}")
        start = RULE if start is None else start
        rows = len(CATEGORIES) if per_category else 1
        self.per_category, self.blocks = per_category, tuple(blocks)
        init = torch.tensor([start.get(b, 0.0) for b in self.blocks], dtype=torch.float32)
        self.weight = nn.Parameter(init.repeat(rows, 1))
        self.bias = nn.Parameter(torch.zeros(len(CATEGORIES)))

    @classmethod
    def from_config(cls, config: str | dict[str, Any]) -> DecisionNet:
        """An unweighed net (the hand-set rule) from a named architecture
        (`models/configs/decision-NAME.json`) or its dict."""
        cfg = model_config("decision", config) if isinstance(config, str) else config
        return cls(per_category=bool(cfg["per_category"]),
                   blocks=tuple(cfg.get("blocks", RULE_BLOCKS)))

    @classmethod
    def rule(cls, vote: float, fit: float) -> DecisionNet:
        """The hand-set rule: parser × vote^`vote` × fit^−`fit`."""
        return cls(per_category=False, start={"parser": 1.0, "vote": vote, "fit": -fit})

    def config(self) -> dict[str, Any]:
        return {"per_category": self.per_category, "blocks": list(self.blocks)}

    def forward(self, evidence: torch.Tensor) -> torch.Tensor:
        return (evidence * self.weight).sum(-1) + self.bias


class CategoryDecider:
    """The trained decision: `posterior(evidence)` per photo."""

    def __init__(self, net: DecisionNet, meta: dict[str, Any] | None = None) -> None:
        self.net = net.eval()
        self.meta = meta or {}

    @classmethod
    def from_pretrained(cls, folder: Path = DECISION_WEIGHTS) -> CategoryDecider:
        meta = read_meta(folder, "category decision", "flatlay train decision")
        return cls(load_weights(folder, DecisionNet.from_config(meta["model_cfg"])), meta)

    def save_pretrained(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        save_weights(folder, self.net, {"architecture": "DecisionNet",
                                        "model_cfg": self.net.config(), **(extra or {})})

    @torch.inference_mode()
    def posterior(self, evidence: CategoryEvidence) -> dict[str, float]:
        """Category → probability."""
        logits = self.net(torch.from_numpy(evidence.stacked(self.net.blocks))[None])[0]
        return dict(zip(CATEGORIES, torch.softmax(logits, -1).tolist(), strict=True))


@functools.cache
def shipped_decider() -> CategoryDecider | None:
    """The shipped decision, loaded once per process (None where none ships: the hand-set
    rule decides)."""
    if not (DECISION_WEIGHTS / "config.json").is_file():
        return None
    return CategoryDecider.from_pretrained()
