"""Train the garment heads on the garment world: `flatlay train pattern`, `flatlay train
closure` and `flatlay train category` (the same net and loop; the closure head on the
categories whose closure the pixels decide, models.attributes.CLOSURE_CHOICES).

For the attribute heads each seed gives two views of one garment with its true label
(models.attributes.world_pattern, world_closure): the true flat-lay, and the wild photo's
visible garment (occluders cut out, as `cutout` and the warp see it). Both are rendered at
`render` px and reduced by `models.pattern.pattern_input`, then cached. The category head
sees what stage 1 gives it (`models.pattern.category_input`): by default the decoded photo's
second-look square around the shipped parser's own mask, beside that mask, on train seeds
from `train_start` (no model that decides the category learned from them); with `view
"jittered"` the true mask coarsened to the parser's grid and its box jittered as a first
pass's would be (`models.train.parser`). Augmentation: mirror, brightness/colour
shifts, and on a share of the batch a blur down to about 128² and back, which is how a
generated garment arrives. Cross-entropy; a checkpoint every `ckpt_every` steps, resumed
automatically. `init` warm-starts from a weights folder (more views, a longer schedule); the
weights are exported only when their validation accuracy beats the head already at `out`,
with a model card that keeps the cumulative steps and minutes.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.attributes import CLOSURE_CHOICES, world_closure, world_pattern
from models.config import model_config
from models.garments import CATEGORIES, SPLITS, GarmentSample, generate
from models.parser import MASK_SIZE
from models.pattern import (
    CategoryClassifier,
    ClosureClassifier,
    PatternClassifier,
    PatternNet,
    category_input,
    pattern_input,
    to_tensor,
)
from models.train.common import (
    TrainRun,
    changed_flags,
    cumulative,
    export_refusal,
    machine_line,
    numpy_rng,
    render_map,
    seen_seeds_record,
    served_photo,
    started_from_line,
    supervised_loop,
    warm_start,
)
from models.train.parser import zoom_view


@dataclass
class PatternTrainConfig(TrainRun):
    FAMILY: ClassVar[str] = "pattern"
    HEAD: ClassVar[type[PatternClassifier]] = PatternClassifier
    # The architecture; empty: the named config's (`models/configs/pattern-tiny.json`).
    model: dict = field(default_factory=dict)
    n_train: int = 4_000
    n_val: int = 600
    render: int = 192
    steps: int = 1_500
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    eval_every: int = 250
    blur_share: float = 0.3
    # A weights folder to start from (empty: from scratch).
    init: str = ""


@dataclass
class ClosureTrainConfig(PatternTrainConfig):
    """`flatlay train closure`: rendered larger, as a zip or a row of buttons is a line a few
    pixels wide."""

    FAMILY: ClassVar[str] = "closure"
    HEAD: ClassVar[type[PatternClassifier]] = ClosureClassifier
    render: int = 320
    n_train: int = 3_000
    n_val: int = 500


@dataclass
class CategoryTrainConfig(PatternTrainConfig):
    """`flatlay train category`: wild photos only (what stage 1 reads), rendered larger than
    the parser's, as knit, ribbing and hems are a few pixels wide."""

    FAMILY: ClassVar[str] = "category"
    HEAD: ClassVar[type[PatternClassifier]] = CategoryClassifier
    render: int = 512
    n_train: int = 16_000
    n_val: int = 800
    steps: int = 4_000
    lr: float = 2e-3
    eval_every: int = 500
    blur_share: float = 0.1
    # "served": the view the service gives the head (the JPEG-decoded photo, the shipped
    # parser's own mask and second-look square); "jittered": the true mask coarsened and its
    # box jittered as a first pass's (the ninth session's head: 0.844 on its own views, 0.774
    # on served ones).
    view: str = "served"
    # Served views start past every seed the parser and the category decision learned from,
    # so the masks carry the parser's errors on photos it never saw.
    train_start: int = 300_000


# The categories whose closure the closure head reads (the others have one), in turn.
READ_CLOSURE = tuple(c for c, choices in CLOSURE_CHOICES.items() if len(choices) > 1)


def coarse_mask(mask: np.ndarray) -> np.ndarray:
    """A true (H, W) mask as the parser gives it: averaged onto the parser's mask grid
    (MASK_SIZE² over the square photo) and bilinearly back, (H, W) float32 in [0, 1]."""
    m = Image.fromarray((np.asarray(mask, np.float32) * 255).astype(np.uint8))
    small = m.resize((MASK_SIZE, MASK_SIZE), Image.Resampling.BOX)
    return np.asarray(small.resize(m.size, Image.Resampling.BILINEAR), np.float32) / 255.0


def _attribute_views(s: GarmentSample, label: int, size: int) -> tuple[list, int, int]:
    return ([pattern_input(s.flat_image, s.flat_mask, size),
             pattern_input(s.wild_image, s.wild_mask, size)], label, CATEGORIES.index(s.category))


def _pattern_views(seed: int, render: int, size: int) -> tuple[list, int, int]:
    s = generate(seed, size=render)
    return _attribute_views(s, PatternClassifier.LABELS.index(world_pattern(s.attributes)),
                            size)


def _closure_views(seed: int, render: int, size: int) -> tuple[list, int, int]:
    s = generate(seed, size=render, category=READ_CLOSURE[seed % len(READ_CLOSURE)])
    closure = world_closure(s.category, s.attributes["shape"])
    return _attribute_views(s, ClosureClassifier.LABELS.index(closure), size)


def _category_views(seed: int, render: int, size: int) -> tuple[list, int, int]:
    s = generate(seed, size=render)
    square = zoom_view(seed, s.wild_mask)
    if square is None:  # nothing visible: the whole photo, as no first pass would crop
        square = (0.0, 0.0, float(render))
    view = category_input(s.wild_image, coarse_mask(s.wild_mask), size, square)
    return [view], CATEGORIES.index(s.category), CATEGORIES.index(s.category)


@functools.cache
def _served_parser():  # noqa: ANN202 (one per render process)
    from models.parser import GarmentParser

    torch.set_num_threads(1)
    return GarmentParser.from_pretrained()  # no head: its mask is the one the head reads


def _served_category_views(seed: int, render: int, size: int) -> tuple[list, int, int]:
    """The head's input as the service makes it: the shipped parser's mask of the decoded
    photo, the second look's square around it (`category_input`); where stage 1 would refuse
    the photo, the whole photo with the parser's mask."""
    s, photo = served_photo(seed, render)
    mask = _served_parser().parse(photo).mask
    square = None if (mask > 0.5).any() else (0.0, 0.0, float(render))
    view = category_input(photo, mask, size, square)
    return [view], CATEGORIES.index(s.category), CATEGORIES.index(s.category)


# Each head's views of one seed: (views, label, category index). The attribute heads see the
# flat-lay and the wild garment; the category head the wild photo's second look.
_VIEWS = {"pattern": _pattern_views, "closure": _closure_views, "category": _category_views,
          "category-served": _served_category_views}


def _views(job: tuple[int, int, int, str]) -> tuple[list[np.ndarray], int, int]:
    seed, render, size, head = job
    return _VIEWS[head](seed, render, size)


def pattern_data(run_dir: Path, split: str, n: int, render: int, size: int,
                 workers: int, head: str = "pattern", start: int | None = None
                 ) -> dict[str, np.ndarray]:
    """`head`'s data (a key of _VIEWS): inputs (VN, S, S, 4) uint8 (V views per seed:
    flat-lays, then wild garments; the category head's wild photos alone), labels (VN,),
    seeds (VN,), view (VN,) 0 flat / 1 wild; n seeds from `start` (default the split's
    first), cached under run_dir."""
    start = SPLITS[split][0] if start is None else start
    cache = run_dir / f"{head}-{split}-{n}-{render}-{size}.npz"
    if start != SPLITS[split][0]:
        cache = cache.with_name(f"{head}-{split}-{start}-{n}-{render}-{size}.npz")
    if cache.is_file():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    seeds = list(range(start, start + n))
    rows = render_map(_views, [(s, render, size, head) for s in seeds], workers,
                      f"render {split}")
    views, labels, cats = zip(*rows, strict=True)
    kinds = [0, 1] if len(views[0]) == 2 else [1]
    data = {"inputs": np.concatenate([np.stack(v) for v in zip(*views, strict=True)]),
            "labels": np.tile(np.array(labels, np.int64), len(kinds)),
            "categories": np.tile(np.array(cats, np.int64), len(kinds)),
            "seeds": np.array(seeds * len(kinds), np.int64),
            "view": np.repeat(np.array(kinds, np.uint8), n)}
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **data)
    return data


def _batch(data: dict[str, np.ndarray], idx: np.ndarray, rng: np.random.Generator,
           blur_share: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = data["inputs"][idx].copy()
    flip = rng.random(len(idx)) < 0.5
    x[flip] = x[flip, :, ::-1]
    t = to_tensor(x)
    b, _, s, _ = t.shape
    t[:, :3] = t[:, :3] * torch.from_numpy(rng.uniform(0.8, 1.2, (b, 1, 1, 1))).float() + \
        torch.from_numpy(rng.uniform(-0.3, 0.3, (b, 3, 1, 1))).float()
    blur = torch.from_numpy(rng.random(b) < blur_share)
    if blur.any():
        small = int(s * float(rng.uniform(0.4, 0.7)))
        soft = F.interpolate(F.interpolate(t[blur], size=small, mode="area"), size=s,
                             mode="bilinear", align_corners=False)
        t[blur] = soft
    return t, torch.from_numpy(data["labels"][idx]).long()


@torch.no_grad()
def evaluate(net: PatternNet, data: dict[str, np.ndarray], device: str,
             head: type[PatternClassifier] = PatternClassifier) -> dict[str, float]:
    """Accuracy (both views, each view) and recall per label, each garment's label chosen
    among its category's choices (`head.choices`) as the service reads it."""
    net.eval()
    logits = []
    for i in range(0, len(data["labels"]), 256):
        x = to_tensor(data["inputs"][i:i + 256]).to(device)
        logits.append(net(x).cpu().numpy())
    net.train()
    scores = np.concatenate(logits)
    choices = [head.choices(CATEGORIES[c]) for c in data["categories"]]
    allowed = np.array([[ch is None or name in ch for name in head.LABELS] for ch in choices])
    scores = np.where(allowed, scores, -np.inf)
    pred = scores.argmax(1)
    hit = pred == data["labels"]
    out = {"accuracy": round(float(hit.mean()), 4)}
    for kind, name in enumerate(("flat", "wild")):
        if (data["view"] == kind).any():
            out[f"accuracy_{name}"] = round(float(hit[data["view"] == kind].mean()), 4)
    for k, name in enumerate(head.LABELS):
        mine = data["labels"] == k
        if mine.any():
            out[f"recall_{name}"] = round(float(hit[mine].mean()), 4)
    return out


def train_pattern(cfg: PatternTrainConfig) -> dict:
    """Train the head `cfg` names (PatternTrainConfig: pattern; ClosureTrainConfig: closure)
    and write its weights and model card."""
    torch.manual_seed(cfg.seed)
    head, name = cfg.HEAD, cfg.HEAD.NAME
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    views, start = name, SPLITS["train"][0]
    if isinstance(cfg, CategoryTrainConfig):
        if cfg.view not in ("served", "jittered"):
            raise ValueError(f"view {cfg.view!r}: 'served' or 'jittered'")
        if cfg.view == "served":
            views, start = "category-served", cfg.train_start
    before = seen_seeds_record("", {}, start)
    if cfg.init:
        # A warm start learns from photos its weights never saw: it renders past them.
        net, before = warm_start(head.from_pretrained, cfg.init, start)
        net, model = net.train(), net.config()
        start = max(start, before["seen_seeds"][1])
    else:
        model = cfg.model or model_config(cfg.FAMILY, cfg.config)
        net = PatternNet.from_config(model, classes=len(head.LABELS))
    net = net.to(cfg.device)
    train_data = pattern_data(run, "train", cfg.n_train, cfg.render, net.input_size,
                              cfg.workers, views, start)
    val_data = pattern_data(run, "val", cfg.n_val, cfg.render, net.input_size, cfg.workers,
                            views)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)

    def batch_loss() -> tuple[torch.Tensor, dict[str, float]]:
        idx = rng.integers(len(train_data["labels"]), size=cfg.batch)
        x, y = _batch(train_data, idx, rng, cfg.blur_share)
        loss = F.cross_entropy(net(x.to(cfg.device)), y.to(cfg.device))
        return loss, {"loss": loss.item()}

    history, seconds = supervised_loop(
        cfg, net, opt, desc=f"train {name}", steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup,
        eval_every=cfg.eval_every, batch_loss=batch_loss,
        evaluate=lambda: evaluate(net, val_data, cfg.device, head),
        rng=numpy_rng(rng))
    final = history[-1] if history else evaluate(net, val_data, cfg.device, head)
    out = Path(cfg.out)
    if (out / "config.json").is_file():
        shipped = head.from_pretrained(out).net
        shipped_val = val_data if shipped.input_size == net.input_size else pattern_data(
            run, "val", cfg.n_val, cfg.render, shipped.input_size, cfg.workers, views)
        refusal = export_refusal("accuracy", final["accuracy"], {
            f"the {name} head in {out}": evaluate(shipped, shipped_val, cfg.device,
                                                  head)["accuracy"]})
        if refusal:
            print(refusal)
            return final
    training = {
        "command": f"flatlay train {name} --config "
                   f"{cfg.config.removeprefix(cfg.FAMILY + '-')} --steps {cfg.steps}"
                   + changed_flags(cfg, "n_train", "init", "lr"),
        "config": {**asdict(cfg), "model": model},
        "train_seeds": [start, start + cfg.n_train],
        "seen_seeds": [before["seen_seeds"][0], start + cfg.n_train],
        "val_seeds": [SPLITS["val"][0], SPLITS["val"][0] + cfg.n_val],
        "seconds_this_run": seconds,
        "machine": machine_line(cfg.device),
        "started_from": before if cfg.init else None,
        **cumulative(before, cfg.steps, seconds),
    }
    head(net.cpu()).save_pretrained(out, {"training": training, "metrics": final})
    write_pattern_card(out, training, final, history, head)
    print(f"exported to {out}: validation accuracy {final['accuracy']}")
    return final


# What each head's card says it names, and what it was trained on.
_BOTH_VIEWS = "true flat-lays and wild photos' visible garments of {}"
_CARD = {
    "pattern": ("names a delivered garment's pattern", _BOTH_VIEWS.format("every category")),
    "closure": ("names how a garment closes, among its category's choices "
                "(`models.attributes.CLOSURE_CHOICES`)",
                _BOTH_VIEWS.format(f"the categories with a choice ({', '.join(READ_CLOSURE)}) in "
                              "turn")),
    "category": ("names the photo's garment's category, a third look whose probabilities "
                 "stage 3's decision weighs (`models.decision`)",
                 "wild photos' second-look squares (the box jittered as a first pass's) beside "
                 "a mask as coarse as the parser's, every category"),
}
# The category head's served views (CategoryTrainConfig.view "served").
_SERVED_CATEGORY = ("the decoded wild photos' second-look squares around the shipped parser's "
                    "own mask, beside that mask, every category")


def write_pattern_card(folder: Path, training: dict, metrics: dict, history: list[dict],
                       head: type[PatternClassifier] = PatternClassifier) -> None:
    c = training["config"]
    names, trained_on = _CARD[head.NAME]
    if c.get("view") == "served":
        trained_on = _SERVED_CATEGORY
    kinds = [k for k in ("flat", "wild") if f"accuracy_{k}" in metrics]

    def cells(h: dict) -> str:
        return " | ".join(f"{h[f'accuracy_{k}']:.3f}" for k in kinds)

    rows = "\n".join(f"| {h['step']} | {h['loss']} | {h['accuracy']:.3f} | {cells(h)} |"
                     for h in history)
    recalls = ", ".join(f"{k.removeprefix('recall_')} {v:.3f}" for k, v in metrics.items()
                        if k.startswith("recall_"))
    per_view = ", ".join(f"{k} {metrics[f'accuracy_{k}']:.3f}" for k in kinds)
    start = started_from_line(training.get("started_from"))
    seen = training.get("seen_seeds", training["train_seeds"])
    seen = ("" if seen == training["train_seeds"] else
            f" (with those its start had learned from: {seen[0]}–{seen[1] - 1})")
    text = f"""# {head.NAME.capitalize()} head ({folder.name})

A small CNN (`models.pattern.PatternNet`, width {c['model']['width']}, input \
{c['model']['input_size']}²) that {names}: {', '.join(head.LABELS)}. \
{start} on the procedural garment world only ({trained_on}, rendered at \
{c['render']} px); nothing downloaded.

- Training command: `{training['command']}`
- Data: garment-world train seeds {training['train_seeds'][0]}–\
{training['train_seeds'][1] - 1}{seen}, validation seeds {training['val_seeds'][0]}–\
{training['val_seeds'][1] - 1}; seed {c['seed']}.
- {c['steps']} steps of batch {c['batch']}, \
{training['seconds_this_run'] / 60:.1f} minutes on {training['machine']}; cumulative \
{training['cumulative_steps']} steps, {training['cumulative_minutes']} minutes.
- Validation: accuracy {metrics['accuracy']:.3f} ({per_view}); recall per \
{head.NAME}: {recalls}.

| step | loss | accuracy | {' | '.join(kinds)} |
|---:|---:|---:|{'---:|' * len(kinds)}
{rows}
"""
    (folder / "MODEL_CARD.md").write_text(text)
