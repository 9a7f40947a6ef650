"""Train stage 5's registration: `flatlay train registration`.

Each garment-world photo goes through stages 1–5 exactly as served (parser, StructureNet,
category decision, SLLE fit, the spline's warp at `photo_size` and the silhouette refiner),
with registration itself off; the example is the refiner's views of W, the refined Ŝ, the
spline's backward map area-averaged to the CANVAS² canvas, and the true map from the
renderer's correspondence (`models.registration.true_photo_map`). The loss is the end-point
error of the composed map (`composed_map`) against the truth where the photo shows the
garment, in per cent of the photo's longer side; mirror augmentation, cosine learning rate.
Validation reports the end-point error of the spline's map and of the registered one on the
validation seeds and, as a diagnosis, on the same seeds drawn from the held-out shape
family. The weights are exported only when they beat the spline and the shipped
registration on validation. Train seeds start past the silhouette refiner's, so both stages
meet photos they never saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from models.config import model_config
from models.garments import SPLITS
from models.registration import (
    PhotoRegistration,
    RegistrationNet,
    composed_map,
    endpoint_error,
    true_photo_map,
)
from models.silhouette import CANVAS, VIEW_SIZE, refiner_tensors, refiner_views
from models.train.common import (
    TrainRun,
    export_refusal,
    numpy_rng,
    per_set_means,
    seen_seeds_record,
    seen_seeds_training,
    served_aligner,
    served_alignment,
    stage_views,
    stages_stamp,
    supervised_loop,
    warm_start,
)
from models.warp import signed_distance

# Past every seed the refiner (from 200 000) has seen in its 12 000-photo runs.
TRAIN_START = 300_000
FIELDS = ("sdf", "mask", "coverage", "rgb", "photo_map", "truth", "known", "scale", "right",
          "seed")


@dataclass
class RegistrationTrainConfig(TrainRun):
    FAMILY: ClassVar[str] = "registration"
    # The architecture; empty: the named config's (`models/configs/registration-tiny.json`).
    model: dict = field(default_factory=dict)
    n_train: int = 6_000
    n_val: int = 600
    photo_size: int = VIEW_SIZE
    steps: int = 6_000
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    eval_every: int = 500
    # A weights folder to start from (its photos are not rendered again); empty: scratch.
    init: str = ""


def registration_example(job: tuple[int, int, str]) -> dict | None:
    """One photo's example (see FIELDS), or None where stages 1–5 refuse it."""
    seed, photo_size, family = job
    aligner = served_aligner(register_photo=False)
    s, photo, coarse = served_alignment(aligner, seed, photo_size, family, coords=True)
    if coarse is None:
        return None
    truth, known = true_photo_map(s.wild_mask, s.wild_flat_coords, CANVAS)
    pm = torch.from_numpy(coarse.photo_map)[None]
    photo_map = F.adaptive_avg_pool2d(pm, CANVAS)[0].numpy()
    return {"sdf": signed_distance(coarse.fused.silhouette).astype(np.float16),
            **refiner_views(coarse.warped), "photo_map": photo_map, "truth": truth,
            "known": known,
            # Photo pixels → per cent of the photo's longer side (what NME's unit is).
            "scale": np.float32(100.0 / max(photo.shape[:2])),
            "right": coarse.fused.category == s.category, "seed": seed}


def registration_data(run: Path, name: str, start: int, n: int, family: str, photo_size: int,
                      workers: int) -> dict[str, np.ndarray]:
    """n photos from seed `start` through stages 1–5 (`stage_views`)."""
    return stage_views(run, name, start, n, family, photo_size, workers, registration_example,
                       FIELDS, stages_stamp(refined=True))


def _batch(d: dict[str, np.ndarray], idx: np.ndarray) -> tuple[torch.Tensor, ...]:
    """(inputs, spline map, true map, known, scale) tensors of the examples `idx`."""
    x, _ = refiner_tensors(d["sdf"][idx], d["mask"][idx], d["coverage"][idx], d["rgb"][idx])
    return (x, *(torch.from_numpy(np.asarray(d[k][idx])) for k in ("photo_map", "truth",
                                                                  "known", "scale")))


@torch.no_grad()
def photo_errors(net: RegistrationNet | None, d: dict[str, np.ndarray]) -> np.ndarray:
    """Per-photo end-point error (% of the photo's side) of the registered map, or of the spline's
    map when `net` is None."""
    out = []
    if net is not None:
        net.eval()
    for i in range(0, len(d["seed"]), 64):
        x, pm, truth, known, scale = _batch(d, np.arange(i, min(i + 64, len(d["seed"]))))
        if net is not None:
            pm = composed_map(pm, net(x))
        out.append(endpoint_error(pm, truth, known, scale).numpy())
    if net is not None:
        net.train()
    return np.concatenate(out)


def evaluate(net: RegistrationNet | None, sets: dict[str, dict], right: dict[str, np.ndarray]
             ) -> dict[str, float]:
    """Mean end-point error on each set (`epe_SET`), and where the category was right."""
    return per_set_means("epe", {name: photo_errors(net, d) for name, d in sets.items()}, right)


def train_registration(cfg: RegistrationTrainConfig) -> dict:
    torch.manual_seed(cfg.seed)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    if cfg.init:
        net, before = warm_start(PhotoRegistration.from_pretrained, cfg.init, TRAIN_START)
        model = net.config()
    else:
        model = cfg.model or model_config("registration", cfg.config)
        net = RegistrationNet.from_config(model)
        before = seen_seeds_record("", {}, TRAIN_START)
    net = net.to(cfg.device)
    train_start = before["seen_seeds"][1]
    val_start = SPLITS["val"][0]
    sets = {"val": registration_data(run, "val", val_start, cfg.n_val, "standard",
                                     cfg.photo_size, cfg.workers),
            "heldout_family": registration_data(run, "val", val_start, cfg.n_val, "heldout",
                                                cfg.photo_size, cfg.workers)}
    train = registration_data(run, "train", train_start, cfg.n_train, "standard",
                              cfg.photo_size, cfg.workers)
    right = {k: v["right"].astype(bool) for k, v in sets.items()}
    base = evaluate(None, sets, right)
    print(f"the spline's map: {base}")
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)

    def batch_loss() -> tuple[torch.Tensor, dict[str, float]]:
        b = _batch(train, rng.integers(len(train["seed"]), size=cfg.batch))
        x, pm, truth, known, scale = (t.to(cfg.device) for t in b)
        if rng.random() < 0.5:  # the garment seen in a mirror: every canvas field flips
            x, pm, truth, known = x.flip(-1), pm.flip(-1), truth.flip(-1), known.flip(-1)
        loss = endpoint_error(composed_map(pm, net(x)), truth, known, scale).mean()
        return loss, {"loss": loss.item()}

    history, seconds = supervised_loop(
        cfg, net, opt, desc="train registration", steps=cfg.steps, lr=cfg.lr,
        warmup=cfg.warmup, eval_every=cfg.eval_every, batch_loss=batch_loss,
        evaluate=lambda: evaluate(net, sets, right), rng=numpy_rng(rng))
    final = history[-1] if history else evaluate(net, sets, right)
    out = Path(cfg.out)
    rivals = {"the spline": base["epe_val"]}
    if (out / "config.json").is_file():
        rivals["the shipped registration"] = evaluate(
            PhotoRegistration.from_pretrained(out).net, sets, right)["epe_val"]
    refusal = export_refusal("end-point error", final["epe_val"], rivals,
                             lower_is_better=True)
    if refusal:
        print(refusal)
        return final
    training = seen_seeds_training(cfg, "registration", model, before, train_start, val_start,
                                   int(len(train["seed"])), seconds)
    PhotoRegistration(net.cpu()).save_pretrained(out, {
        "training": training, "metrics": final, "baseline": base})
    write_registration_card(out, training, final, base, history)
    print(f"exported to {out}: validation end-point error {base['epe_val']} → "
          f"{final['epe_val']} % of the photo's side" + "".join(
              f" ({k} had {v})" for k, v in rivals.items() if k != "the spline"))
    return final


def write_registration_card(folder: Path, training: dict, metrics: dict, base: dict,
                            history: list[dict]) -> None:
    c = training["config"]
    origin = training.get("started_from")
    start = ("Trained from scratch" if not origin else
             f"Warm-started from `{origin['weights']}` (`{origin['command']}`, "
             f"{origin['cumulative_steps']} steps) and trained")
    seen = training["seen_seeds"]
    rows = "\n".join(
        f"| {h['step']} | {h['loss']} | {h['epe_val']:.3f} | {h['epe_val_right']:.3f} "
        f"| {h['epe_heldout_family']:.3f} |" for h in history)
    text = f"""# Registration ({folder.name})

A U-Net of width {c['model']['width']} (`models.registration.RegistrationNet`) that reads \
the refined Ŝ's signed distance, the warped photo mask, the photo's coverage of the canvas \
and the warped photo W on the {CANVAS}² canonical canvas and predicts a displacement field \
at 32² through a zero-initialised layer; the spline's backward map is read at the displaced \
positions and the photo sampled once through it. Stage 5 applies it after the silhouette \
refiner (`StructureAligner`). {start} on the procedural garment world only, against the \
renderer's true correspondence; nothing downloaded.

- Training command: `{training['command']}`
- Data: {training['examples']} photos of garment-world train seeds \
{training['train_seeds'][0]}–{training['train_seeds'][1] - 1} through the shipped stages 1–5 \
at {c['photo_size']} px (registration off); validation seeds {training['val_seeds'][0]}–\
{training['val_seeds'][1] - 1}, and the same seeds drawn from the held-out shape family as a \
diagnosis; seed {c['seed']}.
- {c['steps']} steps of batch {c['batch']}, cosine learning rate from {c['lr']}, \
{training['seconds_this_run'] / 60:.1f} minutes on {training['machine']}; cumulative \
{training['cumulative_steps']} steps, {training['cumulative_minutes']} minutes, train seeds \
{seen[0]}–{seen[1] - 1} seen in all.
- Validation end-point error against the true map (per cent of the photo's longer side, \
over the canvas pixels where the photo shows the garment): the spline \
{base['epe_val']:.3f} → registered **{metrics['epe_val']:.3f}** (category right: \
{base['epe_val_right']:.3f} → {metrics['epe_val_right']:.3f}); held-out family \
{base['epe_heldout_family']:.3f} → **{metrics['epe_heldout_family']:.3f}**.

| step | loss | EPE val | EPE val, category right | EPE held-out family |
|---:|---:|---:|---:|---:|
| 0 (spline) | | {base['epe_val']:.3f} | {base['epe_val_right']:.3f} | \
{base['epe_heldout_family']:.3f} |
{rows}
"""
    (folder / "MODEL_CARD.md").write_text(text)
