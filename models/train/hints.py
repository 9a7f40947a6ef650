"""Train the hint encoder: `flatlay train hints`.

The structures are the default bank's own (their embeddings come from StructureNet's
structure tower and stay fixed); each step describes a batch of them in words
(`models.hints.describe`: a random part of each one's attributes, in paraphrases) and asks
the text tower's softmax over the whole bank to put its mass on every structure that fits
the description (a multi-positive InfoNCE: many structures fit "long sleeves", and all of
them are right). Validation describes the true structures of garment-world validation
seeds and checks that the bank's best row for the hint has every stated attribute, and that
the hint's category mass names the stated category.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from models.config import model_config
from models.garments import SPLITS, generate
from models.hints import (
    HintEncoder,
    HintNet,
    describe,
    hint_evidence,
    structure_attributes,
    tokenize,
)
from models.train.common import TrainRun, machine_line, numpy_rng, supervised_loop

KEYS = ("category", "sleeve_length", "length", "neckline")


@dataclass
class HintsTrainConfig(TrainRun):
    FAMILY: ClassVar[str] = "hints"
    model: dict = field(default_factory=dict)
    bank: str = ""  # default: the service's default bank
    n_val: int = 400
    steps: int = 3_000
    batch: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    eval_every: int = 500


def bank_attributes(bank) -> list[dict[str, str]]:  # noqa: ANN001
    return [structure_attributes(bank.categories[i], bank.entry_landmarks(i))
            for i in range(len(bank))]


class AttributeTable:
    """The bank rows' attributes as one array per key, to test descriptions against fast."""

    def __init__(self, attributes: list[dict[str, str]]) -> None:
        self.columns = {k: np.array([a.get(k, "") for a in attributes]) for k in KEYS}

    def fits(self, stated: list[dict[str, str]]) -> np.ndarray:
        """(len(stated), rows) bool: row j has every attribute description i states."""
        n = len(next(iter(self.columns.values())))
        out = np.ones((len(stated), n), bool)
        for i, s in enumerate(stated):
            for k, v in s.items():
                out[i] &= self.columns[k] == v
        return out


def _val_descriptions(n: int, seed: int) -> tuple[list[str], list[dict[str, str]]]:
    rng = np.random.default_rng(seed + 1)
    texts, stated = [], []
    for s in range(SPLITS["val"][0], SPLITS["val"][0] + n):
        g = generate(s, size=64)
        text, said = describe(structure_attributes(g.category, g.flat_landmarks), rng)
        texts.append(text)
        stated.append(said)
    return texts, stated


def evaluate(encoder: HintEncoder, bank, table: AttributeTable,  # noqa: ANN001
             texts: list[str], stated: list[dict[str, str]]) -> dict[str, float]:
    """fit@1: the bank's top row has every stated attribute; category: the hint's category
    mass names the stated category (where one is stated)."""
    was = encoder.net.training
    encoder.net.eval()
    top_fits, cat_hits = [], []
    ok = table.fits(stated)
    for i, text in enumerate(texts):
        ev = hint_evidence(text, bank, encoder)
        top_fits.append(bool(ok[i, int(np.argmax(ev.rows))]))
        if "category" in stated[i]:
            cat_hits.append(ev.category == stated[i]["category"])
    encoder.net.train(was)
    return {"fit_at_1": round(float(np.mean(top_fits)), 4),
            "category": round(float(np.mean(cat_hits)), 4)}


def train_hints(cfg: HintsTrainConfig) -> dict:
    from structure_bank import StructureBank
    from structure_bank.builder import default_bank_path

    torch.manual_seed(cfg.seed)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    model = cfg.model or model_config("hints", cfg.config)
    bank_path = Path(cfg.bank) if cfg.bank else default_bank_path()
    bank = StructureBank.load(bank_path)
    attributes = bank_attributes(bank)
    table = AttributeTable(attributes)
    embeddings = torch.from_numpy(bank.embeddings)
    net = HintNet(model).to(cfg.device)
    encoder = HintEncoder(net)
    val_texts, val_stated = _val_descriptions(cfg.n_val, cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    ctx = int(model["text_cfg"]["context_length"])

    def batch_loss() -> tuple[torch.Tensor, dict[str, float]]:
        rows = rng.integers(len(attributes), size=cfg.batch)
        texts, stated = zip(*(describe(attributes[r], rng) for r in rows), strict=True)
        positive = torch.from_numpy(table.fits(list(stated)))
        t = net(tokenize(list(texts), ctx).to(cfg.device))
        logits = net.logit_scale.exp() * t @ embeddings.T
        log_p = logits.log_softmax(1)
        loss = -(log_p.masked_fill(~positive, -torch.inf).logsumexp(1)).mean()
        return loss, {"loss": loss.item()}

    def clamp() -> None:
        with torch.no_grad():  # as CLIP: the temperature stays below 100
            net.logit_scale.clamp_(0, np.log(100))

    history, seconds = supervised_loop(
        cfg, net, opt, desc="train hints", steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup,
        eval_every=cfg.eval_every, batch_loss=batch_loss,
        evaluate=lambda: evaluate(encoder, bank, table, val_texts, val_stated),
        rng=numpy_rng(rng), after_step=clamp)
    final = history[-1] if history else evaluate(encoder, bank, table, val_texts, val_stated)
    training = {
        "command": f"flatlay train hints --config {cfg.config.removeprefix('hints-')} "
                   f"--steps {cfg.steps}",
        "config": {**asdict(cfg), "model": model},
        "bank": {"entries": len(bank), "model": bank.model},
        "val_seeds": [SPLITS["val"][0], SPLITS["val"][0] + cfg.n_val],
        "seconds_this_run": seconds,
        "machine": machine_line(cfg.device),
    }
    HintEncoder(net.cpu()).save_pretrained(Path(cfg.out), {"training": training,
                                                           "metrics": final})
    write_hints_card(Path(cfg.out), training, final, history)
    return final


def write_hints_card(folder: Path, training: dict, metrics: dict, history: list[dict]) -> None:
    c = training["config"]
    t = c["model"]["text_cfg"]
    rows = "\n".join(f"| {h['step']} | {h['loss']} | {h['fit_at_1']:.3f} | {h['category']:.3f} |"
                     for h in history)
    text = f"""# Hint encoder ({folder.name})

open_clip's text transformer ({t['layers']} layers, width {t['width']}, {t['heads']} heads, \
context {t['context_length']}, open_clip's own BPE vocabulary) into StructureNet's \
{c['model']['embed_dim']}-d structure space, trained from scratch on templated, paraphrased \
descriptions of the default bank's {training['bank']['entries']} structures; nothing \
downloaded. Used by retrieval when a request carries a `hint`.

- Training command: `{training['command']}`
- Data: the bank's structures (attributes read from their landmarks); validation: \
descriptions of the true structures of garment-world seeds {training['val_seeds'][0]}–\
{training['val_seeds'][1] - 1}; seed {c['seed']}.
- {c['steps']} steps of batch {c['batch']} (cumulative), \
{training['seconds_this_run'] / 60:.1f} minutes on {training['machine']}.
- Validation: the bank's top row fits every stated attribute for {metrics['fit_at_1']:.3f} \
of the hints; the hint's category is the stated one for {metrics['category']:.3f}.

| step | loss | fit@1 | category |
|---:|---:|---:|---:|
{rows}
"""
    (folder / "MODEL_CARD.md").write_text(text)
