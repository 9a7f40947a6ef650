"""Train StructureNet on garment-world pairs: `flatlay train structurenet --config tiny`.

A plain loop: explicit device, AdamW with warm-up and cosine decay, open_clip's ClipLoss,
a checkpoint every `ckpt_every` steps (resumed automatically), validation recall logged, and
at the end the weights, config and a model card written to a local folder.

One category (`withhold`, default `skirt`) is kept out of training on purpose: the retrieval
benchmark shows that it becomes usable by adding its structures to the bank, with no
retraining (RAGDiffusion's zero-shot path).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from models.garments import CATEGORIES, SPLITS
from models.structurenet import StructureNet, normalise_photos
from models.train.common import TrainRun, machine_line, supervised_loop
from models.train.pairs import PAIR_PHOTO_SIZE, PairArrays, render_pairs

WITHHELD_DEFAULT = ("skirt",)


@dataclass
class TrainConfig(TrainRun):
    FAMILY: ClassVar[str] = "structurenet"
    n_train: int = 24_000
    n_val: int = 1_000
    steps: int = 5_000
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    eval_every: int = 400
    withhold: tuple[str, ...] = field(default_factory=lambda: WITHHELD_DEFAULT)
    # Hard negatives: this share of each batch comes in groups of `hard_group` pairs of one
    # category. In a random batch over 11 categories most negatives differ by category alone,
    # so the loss never has to tell one sleeve length or hem width from another (0: the
    # shipped tiny weights' random batches).
    hard_share: float = 0.0
    hard_group: int = 32
    # How the photo is cropped (models.train.pairs.PHOTO_VIEWS): "parsed" trains on what the
    # pipeline embeds, the parser's crop and mask (a config with `photo_mask` sees the mask).
    view: str = "parsed"


def _pairs(cfg: TrainConfig, model: StructureNet, split: str, n: int) -> PairArrays:
    """Cached pairs of the first `n` seeds of `split`, less the withheld categories."""
    cache = (Path(cfg.run_dir)
             / f"pairs-{split}-{n}-{PAIR_PHOTO_SIZE}-{model.structure_size}-{cfg.view}.npz")
    if cache.is_file():
        return PairArrays.load(cache)
    start = SPLITS[split][0]
    pairs = render_pairs(list(range(start, start + n)), PAIR_PHOTO_SIZE, model.structure_size,
                         workers=cfg.workers, desc=f"render {split} pairs", view=cfg.view)
    keep = ~np.isin(pairs.categories, [CATEGORIES.index(c) for c in cfg.withhold])
    pairs = PairArrays(**{k: v[keep] for k, v in pairs.__dict__.items()})
    pairs.save(cache)
    return pairs


def tower_photos(pairs: PairArrays, model: StructureNet) -> torch.Tensor:
    """The cached photo views with the channels `model` takes, normalised and resized to its
    photo tower's input size."""
    if pairs.photos.shape[-1] < model.photo_channels:
        raise ValueError(f"{model.name} sees the parsed mask; these pairs have none (view "
                         "'parsed' renders it)")
    photos = normalise_photos(pairs.photos[..., :model.photo_channels])
    size = model.photo_size
    if photos.shape[-1] != size:
        photos = F.interpolate(photos, size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)
    return photos


def aux_loss(model: StructureNet, features: torch.Tensor, categories: torch.Tensor,
             landmarks: torch.Tensor) -> torch.Tensor:
    """Category cross-entropy and masked landmark regression from unit embeddings."""
    loss = features.new_zeros(())
    if model.category_head is not None:
        loss = loss + F.cross_entropy(model.category_head(features), categories)
    if model.landmark_head is not None:
        pred = model.landmark_head(features).view(len(features), -1, 2)
        valid = ~torch.isnan(landmarks[..., 0])
        target = torch.nan_to_num(landmarks)
        loss = loss + 10.0 * ((pred - target) ** 2).sum(-1)[valid].mean()
    return loss


@torch.no_grad()
def evaluate(model: StructureNet, pairs: PairArrays, device: str) -> dict[str, float]:
    """Photo → structure retrieval among the pairs: recall@1, @5, top-1 category accuracy."""
    model.eval()
    photos = tower_photos(pairs, model)
    maps = torch.from_numpy(pairs.maps).float() / 255.0
    p = torch.cat([model.encode_photo(photos[i:i + 256].to(device)).cpu()
                   for i in range(0, len(photos), 256)])
    s = torch.cat([model.encode_structure(maps[i:i + 256].to(device)).cpu()
                   for i in range(0, len(maps), 256)])
    ranks = (p @ s.T).argsort(dim=1, descending=True)
    truth = torch.arange(len(p))[:, None]
    cats = torch.from_numpy(pairs.categories.astype(np.int64))
    model.train()
    return {
        "recall_at_1": float((ranks[:, :1] == truth).any(1).float().mean()),
        "recall_at_5": float((ranks[:, :5] == truth).any(1).float().mean()),
        "category_accuracy": float((cats[ranks[:, 0]] == cats).float().mean()),
        "n": len(p),
    }


def batch_indices(categories: torch.Tensor, batch: int, hard_share: float, group: int,
                  gen: torch.Generator) -> torch.Tensor:
    """`batch` pair indices: round(hard_share · batch / group) groups of `group` pairs that
    share a category (drawn uniformly among the categories present), the rest uniform."""
    n_groups = min(int(round(hard_share * batch / max(1, group))), batch // max(1, group))
    present = torch.unique(categories)
    parts = []
    for _ in range(n_groups):
        cat = present[torch.randint(len(present), (1,), generator=gen)]
        rows = torch.nonzero(categories == cat).squeeze(1)
        parts.append(rows[torch.randint(len(rows), (group,), generator=gen)])
    rest = batch - n_groups * group
    parts.append(torch.randint(len(categories), (rest,), generator=gen))
    return torch.cat(parts)


def _augment(photos: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Colour jitter per photo (the garment world already varies light, blur and noise)."""
    b = photos.shape[0]
    gain = 1 + 0.25 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    bias = 0.3 * (torch.rand(b, 3, 1, 1, generator=gen) - 0.5)
    rgb = photos[:, :3] * gain + bias
    return torch.cat([rgb, photos[:, 3:]], dim=1)  # a mask channel stays as parsed


def train(cfg: TrainConfig) -> dict:
    torch.manual_seed(cfg.seed)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    model = StructureNet.from_config(cfg.config).to(cfg.device)
    train_pairs = _pairs(cfg, model, "train", cfg.n_train)
    val_pairs = _pairs(cfg, model, "val", cfg.n_val)
    photos = tower_photos(train_pairs, model)
    maps = torch.from_numpy(train_pairs.maps)
    cats = torch.from_numpy(train_pairs.categories.astype(np.int64))
    lms = torch.from_numpy(train_pairs.landmarks)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    loss_fn = ClipLoss()
    gen = torch.Generator().manual_seed(cfg.seed)

    def batch_loss() -> tuple[torch.Tensor, dict[str, float]]:
        idx = batch_indices(cats, cfg.batch, cfg.hard_share, cfg.hard_group, gen)
        x = _augment(photos[idx], gen).to(cfg.device)
        y = (maps[idx].float() / 255.0).to(cfg.device)
        photo_f, struct_f, scale = model(x, y)
        c, lm = cats[idx].to(cfg.device), lms[idx].to(cfg.device)
        loss = loss_fn(photo_f, struct_f, scale) + 0.5 * (
            aux_loss(model, photo_f, c, lm) + aux_loss(model, struct_f, c, lm))
        return loss, {"loss": loss.item(), "scale": scale.item()}

    def clamp_scale() -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    history, seconds = supervised_loop(
        cfg, model, opt, desc="train structurenet", steps=cfg.steps, lr=cfg.lr,
        warmup=cfg.warmup, eval_every=cfg.eval_every, batch_loss=batch_loss,
        evaluate=lambda: evaluate(model, val_pairs, cfg.device),
        rng=(gen.get_state, gen.set_state), after_step=clamp_scale)

    final = history[-1] if history else evaluate(model, val_pairs, cfg.device)
    training = {
        "command": f"flatlay train structurenet --config "
        f"{cfg.config.removeprefix('structurenet-')} --steps {cfg.steps}",
        "config": asdict(cfg),
        "train_seeds": [SPLITS["train"][0], SPLITS["train"][0] + cfg.n_train],
        "val_seeds": [SPLITS["val"][0], SPLITS["val"][0] + cfg.n_val],
        "train_pairs": len(photos),
        "withheld_categories": list(cfg.withhold),
        "seconds_this_run": seconds,
        "machine": machine_line(cfg.device),
    }
    model.cpu().save_pretrained(Path(cfg.out), extra={"training": training, "metrics": final})
    write_model_card(Path(cfg.out), training, final, history)
    return final


def write_model_card(folder: Path, training: dict, metrics: dict, history: list[dict]) -> None:
    rows = "\n".join(
        f"| {h['step']} | {h['loss']} | {h['recall_at_1']:.3f} | {h['recall_at_5']:.3f} | "
        f"{h['category_accuracy']:.3f} |" for h in history
    )
    text = f"""# StructureNet ({folder.name})

Dual-tower contrastive model (open_clip vision towers, open_clip `ClipLoss`): a photo tower on
in-the-wild garment photos and a structure tower on flat-lay structure maps (silhouette and
landmark heatmaps on the canonical canvas). Trained only on the procedural garment world
(`models.garments`); no pretrained weights, nothing downloaded.

- Training command: `{training['command']}`
- Data: garment-world train seeds {training['train_seeds'][0]}–{training['train_seeds'][1] - 1}
  ({training['train_pairs']} pairs after withholding), validation seeds
  {training['val_seeds'][0]}–{training['val_seeds'][1] - 1}; model seed
  {training['config']['seed']}.
- Withheld from training on purpose (zero-shot test): {', '.join(training['withheld_categories'])}.
- Steps {training['config']['steps']} × batch {training['config']['batch']}, lr
  {training['config']['lr']}, on {training['machine']}.
- Photo view `{training['config'].get('view', 'box')}` (`models.train.pairs.PHOTO_VIEWS`);
  hard negatives: {training['config'].get('hard_share', 0.0)} of each batch in groups of
  {training['config'].get('hard_group', 32)} pairs of one category.

## Validation (photo → own structure among {metrics.get('n')} validation pairs)

| step | loss | recall@1 | recall@5 | category acc. (top-1) |
|---|---|---|---|---|
{rows}

Final: recall@1 {metrics['recall_at_1']:.3f}, recall@5 {metrics['recall_at_5']:.3f},
category accuracy {metrics['category_accuracy']:.3f}. Bank-level metrics (SLLE, zero-shot) come
from `flatlay bench retrieval` and are recorded under `bench/results/`.
"""
    (folder / "MODEL_CARD.md").write_text(text)
