"""Train stage 3's category decision: `flatlay train decision`.

Each garment-world photo goes through stages 1–3 as served (the decoded JPEG at
`photo_size`, the shipped parser, StructureNet and bank) and gives the decision's evidence
(`models.decision.CategoryEvidence`) and its true category. Train seeds start at
TRAIN_START, past every seed a shipped model learned from, so the evidence is as unsure as
the service's. The net is fitted by full-batch L-BFGS on the cross-entropy (a few seconds:
it has a weight per evidence block, per category where the config says so, and a bias per
category), starting from the hand-set rule; validation reports category accuracy, log loss
and how well the confidence flags wrong categories (`review_suggested`), against the rule.
The weights are exported only when their validation accuracy beats the rule's and the
shipped decision's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from models.config import config_path, model_config
from models.decision import BLOCKS, CategoryDecider, DecisionNet
from models.garments import CATEGORIES, SPLITS
from models.train.common import (
    TrainRun,
    cached_shards,
    export_refusal,
    machine_line,
    served_aligner,
    served_photo,
    stages_stamp,
)

# Past the parser's, StructureNet's and the bank's training seeds (all below 30 000).
TRAIN_START = 200_000
FIELDS = ("evidence", "category", "seed")  # evidence: (C, len(BLOCKS)), NaN where absent


@dataclass
class DecisionTrainConfig(TrainRun):
    FAMILY: ClassVar[str] = "decision"
    # The architecture; empty: the named config's (`models/configs/decision-tiny.json`).
    model: dict = field(default_factory=dict)
    n_train: int = 8_000
    n_val: int = 1_000
    photo_size: int = 512
    steps: int = 500  # L-BFGS iterations
    # L2 on the biases and on the weights' distance from their mean over the categories.
    l2: float = 1e-3


def evidence_example(job: tuple[int, int]) -> dict | None:
    """One photo's evidence (C, B), its true category, or None where stage 1 refuses it."""
    from models.pipeline import PipelineError
    from models.pipelines.stages import parse_garment

    seed, photo_size = job
    s, photo = served_photo(seed, photo_size)
    aligner = served_aligner(refine_silhouette=False, register_photo=False)
    try:
        parsed = parse_garment(aligner.parser, photo, with_head=True)
    except PipelineError:
        return None
    query, _ = aligner.embed(photo, parsed.mask > 0.5)
    evidence, _ = aligner.category_evidence(parsed, aligner.fresh_bank(), query)
    blocks = np.full((len(CATEGORIES), len(BLOCKS)), np.nan, np.float32)
    for i, block in enumerate(BLOCKS):
        if getattr(evidence, block) is not None:
            blocks[:, i] = getattr(evidence, block)
    return {"evidence": blocks, "category": CATEGORIES.index(s.category), "seed": seed}


def weighed(data: dict[str, np.ndarray], blocks: tuple[str, ...]) -> np.ndarray:
    """The cached evidence of `blocks`, (N, C, len(blocks)); ValueError where one is absent
    (the head's, gathered behind a parser without a head)."""
    x = data["evidence"][..., [BLOCKS.index(b) for b in blocks]]
    if np.isnan(x).any():
        raise ValueError(f"the cached evidence lacks one of {', '.join(blocks)}: gathered "
                         "behind a parser without the category head")
    return x


def evidence_data(run: Path, name: str, start: int, n: int, photo_size: int,
                  workers: int) -> dict[str, np.ndarray]:
    """n photos from seed `start` through stages 1–3, cached under run/evidence/ in a folder
    named by the set and the stages that gather the evidence."""
    jobs = [(seed, photo_size) for seed in range(start, start + n)]
    folder = (run / "evidence"
              / f"{name}-{start}-{n}-{photo_size}-{stages_stamp(decided=False)}")
    return cached_shards(folder, jobs, evidence_example, FIELDS, workers,
                         f"stages 1–3 {name}")


def scores(probs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Accuracy, log loss and the review flag's rates (`models.attributes.REVIEW_CONFIDENCE`)
    of posteriors (N, C) against true category indices (N,)."""
    from models.eval.quality import review_rates

    right = probs.argmax(1) == truth
    review = review_rates([{"category_confidence": float(c), "category_ok": bool(ok)}
                           for c, ok in zip(probs.max(1), right, strict=True)])
    return {"accuracy": round(float(right.mean()), 4),
            "log_loss": round(float(-np.log(probs[np.arange(len(truth)), truth] + 1e-9)
                                    .mean()), 4),
            "flagged": round(review["review_share"], 4),
            "wrong_flagged": round(review["wrong_rate_flagged"] or 0.0, 4),
            "wrong_rest": round(review["wrong_rate_rest"] or 0.0, 4)}


def posteriors(net: DecisionNet, evidence: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(evidence)), -1).numpy()


def fit_decision(net: DecisionNet, evidence: np.ndarray, truth: np.ndarray, l2: float,
                 steps: int) -> float:
    """Fit `net` in place (full-batch L-BFGS, cross-entropy); returns the final loss."""
    x, y = torch.from_numpy(evidence), torch.from_numpy(truth).long()
    opt = torch.optim.LBFGS(net.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        w = net.weight
        loss = (F.cross_entropy(net(x), y)
                + l2 * ((net.bias ** 2).sum() + ((w - w.mean(0)) ** 2).sum()))
        loss.backward()
        return loss

    opt.step(closure)
    return float(closure().detach())


def train_decision(cfg: DecisionTrainConfig) -> dict:
    import time

    from models.pipelines.stages import StructureAligner

    torch.manual_seed(cfg.seed)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    model = cfg.model or model_config("decision", cfg.config)
    val_start = SPLITS["val"][0]
    val = evidence_data(run, "val", val_start, cfg.n_val, cfg.photo_size, cfg.workers)
    train = evidence_data(run, "train", TRAIN_START, cfg.n_train, cfg.photo_size, cfg.workers)
    rule = DecisionNet.rule(StructureAligner.VOTE_WEIGHT, StructureAligner.FIT_WEIGHT)
    base = scores(posteriors(rule, weighed(val, rule.blocks)), val["category"])
    print(f"the hand-set rule: {base}")
    net = DecisionNet.from_config(model)
    started = time.time()
    loss = fit_decision(net, weighed(train, net.blocks), train["category"], cfg.l2, cfg.steps)
    seconds = round(time.time() - started, 1)
    final = {"train_loss": round(loss, 4),
             "train_accuracy": scores(posteriors(net, weighed(train, net.blocks)),
                                      train["category"])["accuracy"],
             **scores(posteriors(net, weighed(val, net.blocks)), val["category"])}
    print(f"trained: {final}")
    out = Path(cfg.out)
    shipped = None
    if (out / "config.json").is_file():
        old = CategoryDecider.from_pretrained(out).net
        shipped = scores(posteriors(old, weighed(val, old.blocks)), val["category"])
    refusal = export_refusal("accuracy", final["accuracy"], {
        "the hand-set rule": base["accuracy"],
        **({"the shipped decision": shipped["accuracy"]} if shipped else {})})
    if refusal:
        print(refusal)
        return final
    training = {
        "command": f"flatlay train decision --config {cfg.config.removeprefix('decision-')}",
        "config": {**asdict(cfg), "model": model},
        "architecture_file": str(config_path("decision", cfg.config)),
        "train_seeds": [TRAIN_START, TRAIN_START + cfg.n_train],
        "val_seeds": [val_start, val_start + cfg.n_val],
        "examples": int(len(train["category"])),
        "seconds_this_run": seconds,
        "machine": machine_line("cpu"),
    }
    CategoryDecider(net).save_pretrained(out, {"training": training, "metrics": final,
                                               "baseline": base})
    write_decision_card(out, training, final, base, net)
    print(f"exported to {out}: validation accuracy {base['accuracy']} → {final['accuracy']}"
          + (f" (the shipped decision had {shipped['accuracy']})" if shipped else ""))
    return final


def write_decision_card(folder: Path, training: dict, metrics: dict, base: dict,
                        net: DecisionNet) -> None:
    c = training["config"]
    w = net.weight.detach().numpy()
    names = CATEGORIES if net.per_category else ("every category",)
    weights = "\n".join(f"| {n} | " + " | ".join(f"{v:.3f}" for v in row)
                        + (f" | {net.bias[i].item():.3f} |" if net.per_category else " | |")
                        for i, (n, row) in enumerate(zip(names, w, strict=True)))
    if not net.per_category:
        gap = "| " * len(net.blocks)
        weights += "\n" + "\n".join(f"| bias {n} {gap}| {b:.3f} |" for n, b in
                                    zip(CATEGORIES, net.bias.detach().numpy(), strict=True))
    rows = "\n".join(
        f"| {name} | {m['accuracy']:.4f} | {m['log_loss']:.4f} | {m['flagged']:.3f} | "
        f"{m['wrong_flagged']:.3f} | {m['wrong_rest']:.3f} |"
        for name, m in (("hand-set rule", base), ("this decision", metrics)))
    text = f"""# Category decision ({folder.name})

Stage 3's category posterior (`models.decision.DecisionNet`): softmax over the categories of \
Σ_b w_b · evidence_b + bias, evidence blocks {', '.join(net.blocks)} (`CategoryEvidence`), \
{'weights per category' if net.per_category else 'weights shared by every category'}. \
Fitted on the procedural garment world only; nothing downloaded.

- Training command: `{training['command']}`
- Data: {training['examples']} photos of garment-world train seeds \
{training['train_seeds'][0]}–{training['train_seeds'][1] - 1} through the shipped stages 1–3 \
at {c['photo_size']} px; validation seeds {training['val_seeds'][0]}–\
{training['val_seeds'][1] - 1}; seed {c['seed']}.
- Full-batch L-BFGS, at most {c['steps']} iterations, L2 {c['l2']}, \
{training['seconds_this_run']:.1f} s on {training['machine']}; training accuracy \
{metrics['train_accuracy']:.4f}.
- Validation category accuracy: hand-set rule {base['accuracy']:.4f} → \
**{metrics['accuracy']:.4f}**.

| validation | accuracy | log loss | flagged for review | wrong among flagged | wrong \
among the rest |
|---|---:|---:|---:|---:|---:|
{rows}

| weights | {' | '.join(net.blocks)} | bias |
|---|{'---:|' * (len(net.blocks) + 1)}
{weights}
"""
    (folder / "MODEL_CARD.md").write_text(text)
