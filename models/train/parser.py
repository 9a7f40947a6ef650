"""Train the garment parser on the garment world: `flatlay train parser`.

Photos are rendered at 256² (as a camera would see them, then reduced like a real photo is)
and cached as arrays at the parser's input size. Losses: mask BCE, category cross-entropy,
per-landmark spatial cross-entropy against a Gaussian on the heatmap grid (visible,
in-frame landmarks only) and visibility BCE on the photo's category channels. Horizontal
flips swap left and right landmarks. A checkpoint every `ckpt_every` steps, resumed
automatically; weights, config and a model card at the end.

`zoom_share` of each batch are second-look views (`GarmentParser.zoom`): the square around the
garment's visible box, its edges jittered as a first pass's box would be, at the parser's
input size. `init` warm-starts from a weights folder (a longer schedule or a new view mix
without training from scratch).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from models.config import model_config
from models.garments import (
    CATEGORIES,
    SPLITS,
    GarmentSample,
    flip_permutation,
    generate,
    num_landmarks,
)
from models.parser import (
    HEATMAP_SIZE,
    MASK_SIZE,
    PARSER_INPUT,
    GarmentParser,
    ParserNet,
    landmark_offsets,
    normalise,
    soft_argmax,
    square_view,
    zoom_square,
)
from models.train.common import (
    TrainRun,
    changed_flags,
    cumulative,
    machine_line,
    numpy_rng,
    render_map,
    started_from_line,
    supervised_loop,
    warm_start_record,
)

MAX_L = max(num_landmarks(c) for c in CATEGORIES)
RENDER = 256


@dataclass
class ParserTrainConfig(TrainRun):
    FAMILY: ClassVar[str] = "parser"
    # The architecture; empty: the named config's (`models/configs/parser-tiny.json`).
    model: dict = field(default_factory=dict)
    n_train: int = 24_000
    n_val: int = 800
    steps: int = 6_000
    batch: int = 48
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    eval_every: int = 500
    # Share of each batch drawn from second-look views (0: whole photos only).
    zoom_share: float = 0.0
    # Weights folder to start from ("" trains from scratch).
    init: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.zoom_share <= 1.0:
            raise ValueError(f"zoom_share must be in [0, 1], got {self.zoom_share}")


# How far a first pass's garment box is off, as a share of the box's longer side per edge,
# and the margins drawn around it: the second look is trained on boxes it will really get.
ZOOM_JITTER = 0.08
ZOOM_MARGINS = (0.05, 0.3)  # around the margin the second look uses (ZOOM_MARGIN)


def zoom_view(seed: int, mask: np.ndarray) -> tuple[float, float, float] | None:
    """The second look's square (x0, y0, side) in photo px for the photo of `seed` with the
    visible garment `mask`, or None when no garment is visible."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    rng = np.random.default_rng([seed, 1])
    box = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float64)
    box += rng.uniform(-ZOOM_JITTER, ZOOM_JITTER, 4) * max(box[2] - box[0], box[3] - box[1])
    return zoom_square(tuple(box), rng.uniform(*ZOOM_MARGINS))


def _view(s: GarmentSample, seed: int, zoom: bool) -> tuple:
    """One training view of the rendered sample: the whole photo, or its second look."""
    view = zoom_view(seed, s.wild_mask) if zoom else None
    x0, y0, side = view or (0.0, 0.0, float(RENDER))  # the render is square
    photo, scale, (pad_x, pad_y) = square_view(s.wild_image, x0, y0, side)
    mask = square_view(s.wild_mask.astype(np.uint8) * 255, x0, y0, side, MASK_SIZE,
                       fill=0)[0] > 127
    lm = np.zeros((MAX_L, 2), np.float32)
    vis = np.zeros(MAX_L, np.uint8)
    n = len(s.wild_landmarks)
    in_photo = ((s.wild_landmarks >= 0) & (s.wild_landmarks < 1)).all(1)
    lm[:n] = (s.wild_landmarks * RENDER * scale + (pad_x, pad_y)) / PARSER_INPUT
    in_view = ((lm[:n] >= 0) & (lm[:n] < 1)).all(1)
    vis[:n] = s.wild_visibility.astype(bool) & in_photo & in_view
    return photo, mask, CATEGORIES.index(s.category), lm, vis


def _one(seed: int, zoom: bool = False) -> tuple:
    return _view(generate(seed, size=RENDER), seed, zoom)


def _both(seed: int) -> tuple[tuple, tuple]:
    """The whole photo and its second look from one render (rendering is the cost)."""
    s = generate(seed, size=RENDER)
    return _view(s, seed, False), _view(s, seed, True)


def _stack(rows: list[tuple], seeds: list[int]) -> dict[str, np.ndarray]:
    cols = list(zip(*rows, strict=True))
    return {"photos": np.stack(cols[0]), "masks": np.stack(cols[1]),
            "categories": np.array(cols[2], np.int64), "landmarks": np.stack(cols[3]),
            "visible": np.stack(cols[4]), "seeds": np.array(seeds, np.int64)}


def render_parser_data(seeds: list[int], workers: int, desc: str, zoom: bool = False
                       ) -> dict[str, np.ndarray]:
    """photos (N, 128, 128, 3) uint8, masks (N, 64, 64) bool, categories (N,), landmarks
    (N, MAX_L, 2) in the view's unit square, visible (N, MAX_L) uint8. The view: the whole
    photo, or with `zoom` the second look's square."""
    return _stack(render_map(functools.partial(_one, zoom=zoom), seeds, workers, desc), seeds)


def _cache(run_dir: Path, split: str, n: int, zoom: bool) -> Path:
    return run_dir / f"parser-{split}-{n}-{PARSER_INPUT}{'-zoom' if zoom else ''}.npz"


def parser_data(run_dir: Path, split: str, n: int, workers: int, zoom: bool = False
                ) -> dict[str, np.ndarray]:
    cache = _cache(run_dir, split, n, zoom)
    if cache.is_file():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    start = SPLITS[split][0]
    data = render_parser_data(list(range(start, start + n)), workers,
                              f"render {split}{' (zoom)' if zoom else ''}", zoom)
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **data)
    return data


def parser_views(run_dir: Path, split: str, n: int, workers: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The whole-photo and second-look data of a split, each rendered once and cached; where
    neither is cached, both come from one render of each seed (half the cost)."""
    whole, zoom = _cache(run_dir, split, n, False), _cache(run_dir, split, n, True)
    if whole.is_file() or zoom.is_file():
        return (parser_data(run_dir, split, n, workers),
                parser_data(run_dir, split, n, workers, zoom=True))
    start = SPLITS[split][0]
    seeds = list(range(start, start + n))
    rows = render_map(_both, seeds, workers, f"render {split} (whole and zoom)")
    data = _stack([r[0] for r in rows], seeds), _stack([r[1] for r in rows], seeds)
    run_dir.mkdir(parents=True, exist_ok=True)
    for path, d in zip((whole, zoom), data, strict=True):
        np.savez(path, **d)
    return data


_FLIP = {CATEGORIES.index(c): flip_permutation(c) for c in CATEGORIES}


def _batch(data: dict[str, np.ndarray], idx: np.ndarray, rng: np.random.Generator,
           augment: bool) -> dict[str, torch.Tensor]:
    photos = data["photos"][idx].copy()
    masks = data["masks"][idx].copy()
    lms = data["landmarks"][idx].copy()
    vis = data["visible"][idx].copy()
    cats = data["categories"][idx]
    if augment:
        for i in np.flatnonzero(rng.random(len(idx)) < 0.5):
            n = num_landmarks(CATEGORIES[cats[i]])
            perm = _FLIP[int(cats[i])]
            photos[i] = photos[i, :, ::-1]
            masks[i] = masks[i, :, ::-1]
            flipped = lms[i, :n].copy()
            flipped[:, 0] = 1.0 - flipped[:, 0]
            lms[i, :n] = flipped[perm]
            vis[i, :n] = vis[i, :n][perm]
    x = normalise(photos)
    if augment:
        b = len(idx)
        x = x * torch.from_numpy(rng.uniform(0.8, 1.2, (b, 1, 1, 1))).float() + \
            torch.from_numpy(rng.uniform(-0.3, 0.3, (b, 3, 1, 1))).float()
    return {"x": x, "mask": torch.from_numpy(masks).float()[:, None],
            "category": torch.from_numpy(cats), "landmarks": torch.from_numpy(lms),
            "visible": torch.from_numpy(vis).bool()}


_OFFSETS = torch.tensor([landmark_offsets()[c][0] for c in CATEGORIES])
_COUNTS = torch.tensor([num_landmarks(c) for c in CATEGORIES])


def category_channels(out: dict[str, torch.Tensor], cats: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each photo's own category's heatmaps (B, MAX_L, H, W), visibility logits (B, MAX_L)
    and which of the MAX_L slots exist for that category (B, MAX_L) bool."""
    j = torch.arange(MAX_L)
    exists = j[None] < _COUNTS[cats][:, None]
    idx = torch.where(exists, _OFFSETS[cats][:, None] + j[None], _OFFSETS[cats][:, None])
    hm = out["heatmaps"]
    heat = hm.gather(1, idx[..., None, None].expand(-1, -1, hm.shape[2], hm.shape[3]))
    vis = out["visibility"].gather(1, idx)
    return heat, vis, exists


def _gaussian_targets(landmarks: torch.Tensor, size: int, sigma: float = 1.0) -> torch.Tensor:
    c = torch.arange(size).float() + 0.5
    px = landmarks[..., 0:1] * size
    py = landmarks[..., 1:2] * size
    gx = torch.exp(-((c - px) ** 2) / (2 * sigma**2))
    gy = torch.exp(-((c - py) ** 2) / (2 * sigma**2))
    t = gy[..., :, None] * gx[..., None, :]
    return t / t.sum((-1, -2), keepdim=True).clamp_min(1e-8)


def parser_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, float]]:
    cats = batch["category"]
    heat, vis_logits, exists = category_channels(out, cats)
    visible = batch["visible"] & exists
    mask = F.binary_cross_entropy_with_logits(out["mask"], batch["mask"])
    category = F.cross_entropy(out["category"], cats)
    logp = torch.log_softmax(heat.flatten(2), -1)
    target = _gaussian_targets(batch["landmarks"], heat.shape[-1]).flatten(2)
    per_lm = -(target * logp).sum(-1)
    landmarks = per_lm[visible].mean() if visible.any() else heat.sum() * 0
    visibility = F.binary_cross_entropy_with_logits(vis_logits[exists],
                                                    visible[exists].float())
    total = mask + category + 0.5 * landmarks + 0.5 * visibility
    return total, {"mask": mask.item(), "category": category.item(),
                   "landmarks": landmarks.item(), "visibility": visibility.item()}


@torch.no_grad()
def evaluate(net: ParserNet, data: dict[str, np.ndarray], device: str) -> dict[str, float]:
    """Mask IoU at 64², category accuracy, landmark NME (visible, in the photo's unit
    square, read with the true category's schema) and visibility accuracy."""
    net.eval()
    ious, hits, errs, vis_ok = [], [], [], []
    rng = np.random.default_rng(0)
    for i in range(0, len(data["photos"]), 128):
        idx = np.arange(i, min(i + 128, len(data["photos"])))
        b = _batch(data, idx, rng, augment=False)
        out = net(b["x"].to(device))
        out = {k: v.cpu() for k, v in out.items()}
        pred = out["mask"] > 0
        truth = b["mask"] > 0.5
        inter = (pred & truth).flatten(1).sum(1).float()
        union = (pred | truth).flatten(1).sum(1).float().clamp_min(1)
        ious += (inter / union).tolist()
        hits += (out["category"].argmax(1) == b["category"]).tolist()
        heat, vis_logits, exists = category_channels(out, b["category"])
        xy = soft_argmax(heat)
        visible = b["visible"] & exists
        d = (xy - b["landmarks"]).norm(dim=-1)
        errs += d[visible].tolist()
        vis_ok += ((vis_logits > 0) == visible)[exists].tolist()
    net.train()
    return {"mask_iou": round(float(np.mean(ious)), 4),
            "category_accuracy": round(float(np.mean(hits)), 4),
            "landmark_nme": round(float(np.mean(errs)), 4),
            "visibility_accuracy": round(float(np.mean(vis_ok)), 4),
            "n": len(ious)}


def train_parser(cfg: ParserTrainConfig) -> dict:
    torch.manual_seed(cfg.seed)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    zoom_train = zoom_val = None
    if cfg.zoom_share > 0:
        train_data, zoom_train = parser_views(run, "train", cfg.n_train, cfg.workers)
        val_data, zoom_val = parser_views(run, "val", cfg.n_val, cfg.workers)
    else:
        train_data = parser_data(run, "train", cfg.n_train, cfg.workers)
        val_data = parser_data(run, "val", cfg.n_val, cfg.workers)
    before = {"cumulative_steps": 0, "cumulative_minutes": 0.0}
    if cfg.init:
        start = GarmentParser.from_pretrained(Path(cfg.init))
        net, model = start.net.to(cfg.device), start.meta["model_cfg"]
        before = warm_start_record(cfg.init, start.meta.get("training", {}))
    else:
        model = cfg.model or model_config("parser", cfg.config)
        net = ParserNet.from_config(model).to(cfg.device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    n_zoom = round(cfg.batch * cfg.zoom_share)

    def batch_loss() -> tuple[torch.Tensor, dict[str, float]]:
        parts = [(train_data, cfg.batch - n_zoom), (zoom_train, n_zoom)]
        batches = [_batch(data, rng.integers(len(data["photos"]), size=n), rng, augment=True)
                   for data, n in parts if n > 0]
        batch = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
        out = net(batch["x"].to(cfg.device))
        return parser_loss(out, {k: v.to(cfg.device) for k, v in batch.items()})

    def validate() -> dict[str, Any]:
        metrics = evaluate(net, val_data, cfg.device)
        if zoom_val is not None:
            metrics |= {f"zoom_{k}": v for k, v in evaluate(net, zoom_val, cfg.device).items()
                        if k != "n"}
        return metrics

    history, seconds = supervised_loop(
        cfg, net, opt, desc="train parser", steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup,
        eval_every=cfg.eval_every, batch_loss=batch_loss,
        evaluate=validate, rng=numpy_rng(rng))
    final = history[-1] if history else validate()
    training = {
        "command": f"flatlay train parser --config {cfg.config} --steps {cfg.steps}"
                   + changed_flags(cfg, "init", "zoom_share", "lr", "n_train"),
        "config": {**asdict(cfg), "model": model},
        "train_seeds": [SPLITS["train"][0], SPLITS["train"][0] + cfg.n_train],
        "val_seeds": [SPLITS["val"][0], SPLITS["val"][0] + cfg.n_val],
        "seconds_this_run": seconds,
        "machine": machine_line(cfg.device),
    }
    training |= {"started_from": before if cfg.init else None,
                 **cumulative(before, cfg.steps, seconds)}
    GarmentParser(net.cpu()).save_pretrained(Path(cfg.out), {
        "training": training, "metrics": final, "second_look": cfg.zoom_share > 0})
    write_parser_card(Path(cfg.out), training, final, history)
    return final


def write_parser_card(folder: Path, training: dict, metrics: dict, history: list[dict]) -> None:
    zoom = "zoom_category_accuracy" in metrics
    rows = "\n".join(
        f"| {h['step']} | {h['loss']} | {h['mask_iou']:.3f} | {h['category_accuracy']:.3f} | "
        f"{h['landmark_nme']:.4f} | {h['visibility_accuracy']:.3f} |"
        + (f" {h['zoom_mask_iou']:.3f} | {h['zoom_category_accuracy']:.3f} | "
           f"{h['zoom_landmark_nme']:.4f} |" if zoom else "") for h in history)
    c = training["config"]
    start = started_from_line(training.get("started_from"))
    views = (f"\n- A share of {c['zoom_share']} of each batch are second-look views (the visible "
             "garment's box, edges jittered, with a margin, at the input size); the weights' "
             "config turns `GarmentParser`'s second look on." if zoom else "")
    head = ("| step | loss | mask IoU | category acc. | landmark NME | visibility acc. |"
            + (" 2nd look mask IoU | 2nd look category | 2nd look NME |" if zoom else "")
            + "\n|" + "---|" * (9 if zoom else 6))
    text = f"""# Garment parser ({folder.name})

A small encoder–decoder CNN (`models.parser.ParserNet`, width {c['model']['width']}) on the
whole photo letterboxed to {PARSER_INPUT}²: visible-garment mask ({MASK_SIZE}²), category,
one landmark heatmap per (category, landmark) ({HEATMAP_SIZE}²) and landmark visibility.
{start} on the procedural garment world only; nothing downloaded.

- Training command: `{training['command']}`
- Data: garment-world train seeds {training['train_seeds'][0]}–{training['train_seeds'][1] - 1},
  validation seeds {training['val_seeds'][0]}–{training['val_seeds'][1] - 1}; rendered at
  {RENDER}² and reduced to {PARSER_INPUT}²; model seed {c['seed']}.
- Steps {c['steps']} × batch {c['batch']}, AdamW lr {c['lr']} (cosine), horizontal flips with
  left/right landmark swaps, colour jitter; on {training['machine']}. Cumulative
  {training['cumulative_steps']} steps, {training['cumulative_minutes']} minutes of
  training.{views}

## Validation

{head}
{rows}

Final: mask IoU {metrics['mask_iou']:.3f}, category accuracy {metrics['category_accuracy']:.3f},
landmark NME {metrics['landmark_nme']:.4f} (visible landmarks, photo unit square), visibility
accuracy {metrics['visibility_accuracy']:.3f}. The mask comparison with the classical parser
at full resolution is in `bench/results/parser-test.md` (`flatlay bench parser`). These
validation numbers are one forward pass; `GarmentParser.parse` also parses the mirror image
and averages the two.
"""
    (folder / "MODEL_CARD.md").write_text(text)
