"""Train the illuminant estimator on the garment world: `flatlay train illuminant`.

Each seed's wild photo gives the features (`models.illuminant.scene_features`, with the
photo's true garment mask) and the target: the per-channel log ratio of the true flat-lay's
mean garment colour to the photo's visible garment's, i.e. the gain that would put the
photo's colours on the catalog's. MSE on the log gain; validation reports the error left
against the best constant gain (what a model that ignores the scene can do).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from models.config import model_config
from models.garments import SPLITS, generate
from models.illuminant import IlluminantEstimator, IlluminantNet, scene_features
from models.io import decode_image
from models.train.common import TrainRun, machine_line, numpy_rng, render_map, supervised_loop


@dataclass
class IlluminantTrainConfig(TrainRun):
    FAMILY: ClassVar[str] = "illuminant"
    # The architecture; empty: the named config's (`models/configs/illuminant-tiny.json`).
    model: dict = field(default_factory=dict)
    n_train: int = 8_000
    n_val: int = 1_000
    render: int = 256
    steps: int = 3_000
    batch: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-3
    warmup: int = 50
    eval_every: int = 500


def log_gain(flat: np.ndarray, flat_mask: np.ndarray, photo: np.ndarray,
             photo_mask: np.ndarray) -> np.ndarray:
    """(3,) log(mean true garment colour / mean visible garment colour in the photo)."""
    truth = flat[np.asarray(flat_mask) > 0.5].astype(np.float32).mean(0)
    seen = photo[np.asarray(photo_mask) > 0.5].astype(np.float32).mean(0)
    return np.log((truth + 1.0) / (seen + 1.0)).astype(np.float32)


def _example(job: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    seed, render, size = job
    s = generate(seed, size=render)
    if s.wild_mask.sum() < 64:  # the garment is (nearly) out of the photo: no target
        return None
    photo = decode_image(s.wild_jpeg) if s.wild_jpeg else s.wild_image
    return (scene_features(photo, s.wild_mask, size),
            log_gain(s.flat_image, s.flat_mask, photo, s.wild_mask))


def illuminant_data(run_dir: Path, split: str, n: int, render: int, size: int,
                    workers: int) -> dict[str, np.ndarray]:
    """features (M, N_FEATURES), gains (M, 3) for the split's first n seeds that show a
    garment; cached under run_dir."""
    cache = run_dir / f"illuminant-{split}-{n}-{render}-{size}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    start = SPLITS[split][0]
    rows = [r for r in render_map(_example, [(s, render, size) for s in
                                             range(start, start + n)], workers,
                                  f"render {split}") if r is not None]
    data = {"features": np.stack([r[0] for r in rows]), "gains": np.stack([r[1] for r in rows])}
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **data)
    return data


@torch.no_grad()
def evaluate(net: IlluminantNet, data: dict[str, np.ndarray], constant: np.ndarray,
             device: str) -> dict[str, float]:
    """RMSE of the log gain, the net's against the best constant's (the training mean)."""
    net.eval()
    pred = net(torch.from_numpy(data["features"]).to(device)).cpu().numpy()
    net.train()
    truth = data["gains"]
    rmse = float(np.sqrt(((pred - truth) ** 2).mean()))
    prior = float(np.sqrt(((constant - truth) ** 2).mean()))
    return {"rmse": round(rmse, 4), "rmse_constant": round(prior, 4),
            "explained": round(1 - rmse ** 2 / prior ** 2, 4)}


def train_illuminant(cfg: IlluminantTrainConfig) -> dict:
    torch.manual_seed(cfg.seed)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    model = cfg.model or model_config("illuminant", cfg.config)
    net = IlluminantNet.from_config(model).to(cfg.device)
    train = illuminant_data(run, "train", cfg.n_train, cfg.render, net.scene_size, cfg.workers)
    val = illuminant_data(run, "val", cfg.n_val, cfg.render, net.scene_size, cfg.workers)
    x, y = (torch.from_numpy(train[k]).to(cfg.device) for k in ("features", "gains"))
    net.mean.copy_(x.mean(0))
    net.std.copy_(x.std(0).clamp_min(1e-3))
    constant = train["gains"].mean(0)
    opt = torch.optim.AdamW(net.mlp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)

    def batch_loss() -> tuple[torch.Tensor, dict[str, float]]:
        idx = torch.from_numpy(rng.integers(len(x), size=cfg.batch))
        loss = F.mse_loss(net(x[idx]), y[idx])
        return loss, {"loss": loss.item()}

    history, seconds = supervised_loop(
        cfg, net, opt, desc="train illuminant", steps=cfg.steps, lr=cfg.lr,
        warmup=cfg.warmup, eval_every=cfg.eval_every, batch_loss=batch_loss,
        evaluate=lambda: evaluate(net, val, constant, cfg.device), rng=numpy_rng(rng))
    final = history[-1] if history else evaluate(net, val, constant, cfg.device)
    training = {
        "command": f"flatlay train illuminant --config "
                   f"{cfg.config.removeprefix('illuminant-')} --steps {cfg.steps}",
        "config": {**asdict(cfg), "model": model},
        "train_seeds": [SPLITS["train"][0], SPLITS["train"][0] + cfg.n_train],
        "val_seeds": [SPLITS["val"][0], SPLITS["val"][0] + cfg.n_val],
        "seconds_this_run": seconds,
        "machine": machine_line(cfg.device),
    }
    # The best constant gain is kept beside the weights: what the net is measured against.
    IlluminantEstimator(net.cpu()).save_pretrained(Path(cfg.out), {
        "training": training, "metrics": final,
        "constant_gain": np.exp(constant).round(4).tolist()})
    write_illuminant_card(Path(cfg.out), training, final, history)
    return final


def write_illuminant_card(folder: Path, training: dict, metrics: dict,
                          history: list[dict]) -> None:
    c = training["config"]
    rows = "\n".join(f"| {h['step']} | {h['loss']} | {h['rmse']:.4f} | {h['rmse_constant']:.4f} "
                     f"| {h['explained']:.3f} |" for h in history)
    text = f"""# Illuminant estimator ({folder.name})

A small MLP (`models.illuminant.IlluminantNet`, hidden {c['model']['hidden']}) on 21 log-RGB \
statistics of the whole photo at {c['model']['scene_size']}² (frame, background, garment) → \
the per-channel log gain from the photo's garment to the true flat-lay. Trained from scratch \
on the procedural garment world only (photos rendered at {c['render']} px); nothing \
downloaded. Used by the generator's conditions (`coarse_conditions`).

- Training command: `{training['command']}`
- Data: garment-world train seeds {training['train_seeds'][0]}–\
{training['train_seeds'][1] - 1}, validation seeds {training['val_seeds'][0]}–\
{training['val_seeds'][1] - 1}; seed {c['seed']}.
- {c['steps']} steps of batch {c['batch']} (cumulative), \
{training['seconds_this_run'] / 60:.1f} minutes on {training['machine']}.
- Validation: log-gain RMSE {metrics['rmse']:.4f} against {metrics['rmse_constant']:.4f} for \
the best constant gain ({100 * metrics['explained']:.1f}% of its squared error explained).

| step | loss | RMSE | RMSE constant | explained |
|---:|---:|---:|---:|---:|
{rows}
"""
    (folder / "MODEL_CARD.md").write_text(text)
