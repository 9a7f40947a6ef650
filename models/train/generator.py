"""Train stage 6 on the garment world: `flatlay train vae` and `flatlay train generator`.

Both read the pairs that the real stages 1–5 make (`generator_pairs`, cached once under the
run folder). `vae`: an AutoencoderKL on the true flat-lays (random crops: the model is fully
convolutional), L1 + a small KL, then the zero-initialised decoder adapter on (latent of the
truth, W, V) → truth with the autoencoder frozen. `generator`: the bridge's denoiser and
conditioner on the frozen VAE's latents (x̂₀ from x_τ, between the coarse latent and the
truth's); each condition level is dropped at random (and `noretrieval`'s input swapped in), so
one run serves every ablation. Checkpoints every `ckpt_every` steps (resumed automatically),
EMA weights, validation grids as PNG, weights with their configs and a model card at the end.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from models.config import config_path, model_config, train_config
from models.garments import SPLITS
from models.generator.autoencoder import (
    DecoderAdapter,
    build_vae,
    decode_aligned,
    decoder_targets,
    encode_mean,
)
from models.generator.bridge import BridgeSchedule
from models.generator.conditioning import Conditioner, crop_tensor, images_to_tensor
from models.generator.denoiser import build_denoiser, deepen_denoiser
from models.generator.sampling import (
    DenoiserInputs,
    FlatLayGenerator,
    blank_pattern,
    pattern_inputs,
    predict_x0,
)
from models.train.common import (
    TrainRun,
    cosine_lr,
    load_checkpoint,
    load_states,
    machine_line,
    record_eval,
    save_checkpoint,
    state_dicts,
)
from models.train.generator_pairs import cache_pairs


@dataclass
class GeneratorTrainConfig(TrainRun):
    """One `flatlay train vae|generator` run. `model` (architecture) and `train` (training
    settings: `vae`, `generator`, `pairs`) default to the named config's files."""

    FAMILY: ClassVar[str] = "generator"
    vae_out: str = ""  # default models/weights/vae-NAME
    steps: int | None = None
    minutes: float | None = None
    n_train: int | None = None
    # `train vae` only: a generator folder (a run's `candidate/`) to fine-tune the decoder for
    # instead of the shipped generator; the two ship together if the pair beats what ships.
    generator: str = ""
    eval_every: int = 550
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.model = self.model or model_config("generator", self.config)
        self.train = self.train or train_config("generator", self.config)
        self.vae_out = self.vae_out or (
            f"models/weights/vae-{self.config.removeprefix('generator-')}")


def _pairs(cfg: GeneratorTrainConfig) -> tuple[dict, dict]:
    m, p = cfg.model, cfg.train["pairs"]
    latent = m["unet"]["sample_size"]
    n_train = cfg.n_train or p["n_train"]
    val = cache_pairs(Path(cfg.run_dir), "val", p["n_val"], p["photo_size"], m["resolution"],
                      latent, cfg.workers)
    train = cache_pairs(Path(cfg.run_dir), "train", n_train, p["photo_size"], m["resolution"],
                        latent, cfg.workers)
    return train, val


def mirror_rows(x: np.ndarray, flip: np.ndarray | None, width_axis: int) -> np.ndarray:
    """A batch (rows on axis 0) with the rows where `flip` is set seen in a mirror."""
    if flip is None or not flip.any():
        return x
    out = np.array(x, copy=True)
    out[flip] = np.flip(x[flip], width_axis)
    return out


def _targets(pairs: dict, idx: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
    t = mirror_rows(pairs["target"][idx], flip, 2)
    return images_to_tensor(t[..., :3], t[..., 3] / 255.0)


def _photos(pairs: dict, idx: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
    return images_to_tensor(mirror_rows(pairs["warp"][idx], flip, 2),
                            mirror_rows(pairs["validity"][idx], flip, 2))


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1 - decay)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 4, R, R) in [-1, 1] → (N, R, R, 3) uint8 on white."""
    x = ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    rgb, a = x[..., :3], x[..., 3:]
    return (np.clip(rgb * a + (1 - a), 0, 1) * 255 + 0.5).astype(np.uint8)


def write_grid(path: Path, columns: list[tuple[str, np.ndarray]]) -> None:
    """A PNG with one column per (title, (N, R, R, 3) uint8) and one row per asset."""
    from PIL import ImageDraw

    n, r = columns[0][1].shape[:2]
    sheet = Image.new("RGB", (len(columns) * (r + 4), n * (r + 4) + 16), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (title, images) in enumerate(columns):
        draw.text((j * (r + 4) + 2, 2), title, fill="black")
        for i in range(n):
            sheet.paste(Image.fromarray(images[i]), (j * (r + 4), 16 + i * (r + 4)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def image_scores(out: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mean garment SSIM and ΔE2000 of (N, R, R, 3) uint8 outputs against the truth inside
    the true masks (N, R, R) bool (the quality benchmark's definitions, at R)."""
    from models.eval.quality import delta_e, ssim_scores

    ssim = [ssim_scores(o, t, m)[0] for o, t, m in zip(out, truth, mask, strict=True)]
    de = [delta_e(o, t, m) for o, t, m in zip(out, truth, mask, strict=True)]
    return {"ssim_garment": round(float(np.nanmean(ssim)), 4),
            "delta_e": round(float(np.nanmean(de)), 3)}


# ---- the latent space -----------------------------------------------------------------------


def _vae_eval(vae, adapter, val: dict, n: int = 64) -> dict[str, float]:  # noqa: ANN001
    idx = np.arange(min(n, len(val["seed"])))
    target = _targets(val, idx)
    with torch.no_grad():
        z = encode_mean(vae, target)
        plain = decode_aligned(vae, z)
        aligned = decode_aligned(vae, z, adapter, _photos(val, idx)) if adapter else plain
    truth = val["target"][idx, ..., :3]
    mask = val["target"][idx, ..., 3] > 127
    return {"recon_l1": round(float((plain - target).abs().mean()), 4),
            **{f"recon_{k}": v for k, v in image_scores(_to_uint8(plain), truth, mask).items()},
            **{f"aligned_{k}": v for k, v in image_scores(_to_uint8(aligned), truth,
                                                           mask).items()}}


def train_vae(cfg: GeneratorTrainConfig) -> dict:
    """The autoencoder (phase 1) then its decoder adapter (phase 2); one checkpoint for both.
    `flatlay train vae` calls it through `vae_decoder.train_latent_space`, which fine-tunes
    the decoder instead once a generator reads the shipped latent space."""
    torch.manual_seed(cfg.seed)
    if cfg.minutes:
        raise ValueError("--minutes needs a shipped VAE and generator (the decoder "
                         "fine-tuning); a VAE from scratch trains for --steps")
    m, t = cfg.model, cfg.train["vae"]
    run = Path(cfg.run_dir) / "vae"
    run.mkdir(parents=True, exist_ok=True)
    train, val = _pairs(cfg)
    steps = cfg.steps or t["steps"]
    total = steps + t["adapter_steps"]
    vae = build_vae(m["vae"]).to(cfg.device)
    adapter = DecoderAdapter(targets=decoder_targets(vae), width=m["adapter"]["width"]).to(
        cfg.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=t["lr"], weight_decay=0.0)
    opt_a = torch.optim.AdamW(adapter.parameters(), lr=t["lr"], weight_decay=0.0)
    ema = copy.deepcopy(vae).eval()
    rng = np.random.default_rng(cfg.seed)
    step, history = 0, []
    parts = {"vae": vae, "ema": ema, "adapter": adapter, "opt": opt, "opt_a": opt_a}
    state = load_checkpoint(run, cfg.device)
    if state is not None:
        load_states(state, parts)
        rng.bit_generator.state = state["rng"]
        step, history = state["step"], state["history"]
    started = time.time()
    res, crop, b = m["resolution"], t["crop"], t["batch"]
    scale_cell = 2 ** (len(m["vae"]["block_out_channels"]) - 1)
    bar = tqdm(total=total, initial=step, desc="train vae")
    while step < total:
        idx = rng.integers(len(train["seed"]), size=b)
        # An aligned random crop (latent cells stay whole) and a random mirror.
        y0, x0 = (rng.integers(0, (res - crop) // scale_cell + 1, size=2) * scale_cell)
        target = _targets(train, idx)[..., y0:y0 + crop, x0:x0 + crop]
        photo = _photos(train, idx)[..., y0:y0 + crop, x0:x0 + crop]
        if rng.random() < 0.5:
            target, photo = target.flip(-1), photo.flip(-1)
        target, photo = target.to(cfg.device), photo.to(cfg.device)
        if step < steps:
            vae.train()
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, t["lr"], 100, steps)
            post = vae.encode(target).latent_dist
            out = vae.decode(post.sample()).sample
            rec = _garment_l1(out, target, t.get("garment_weight", 0.0))
            loss = rec + t["kl_weight"] * post.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _ema_update(ema, vae, min(0.999, (1 + step) / (10 + step)))
        else:
            if step == steps:
                _set_scaling_factor(ema, train, cfg.device)
            adapter.train()
            k = step - steps
            for group in opt_a.param_groups:
                group["lr"] = cosine_lr(k, t["lr"], 50, t["adapter_steps"])
            with torch.no_grad():
                z = encode_mean(ema, target)
                # The denoiser's latents are not exact: the adapter learns on perturbed ones.
                z = z + 0.2 * torch.randn_like(z)
            out = decode_aligned(ema, z, adapter, photo)
            loss = rec = _garment_l1(out, target, t.get("garment_weight", 0.0))
            opt_a.zero_grad(set_to_none=True)
            loss.backward()
            opt_a.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", phase="vae" if step <= steps else "adapter")
        if step % cfg.eval_every == 0 or step == total:
            if step == total and step == steps:
                _set_scaling_factor(ema, train, cfg.device)
            ema.eval()
            adapter.eval()
            with torch.no_grad():
                metrics = _vae_eval(ema, adapter if step > steps else None, val)
            record_eval(run, history, {"step": step, "loss": round(loss.item(), 4), **metrics})
            _vae_grid(run / f"val-{step:06d}.png", ema, adapter if step > steps else None, val)
        if step % cfg.ckpt_every == 0 or step == total:
            save_checkpoint(run, {**state_dicts(parts), "rng": rng.bit_generator.state,
                                  "step": step, "history": history})
    bar.close()
    out = Path(cfg.vae_out)
    ema.cpu().save_pretrained(out / "vae")
    adapter.cpu().eval().save_pretrained(out / "decoder_adapter")
    training = _training_record(cfg, "vae", time.time() - started, len(train["seed"]),
                                len(val["seed"]))
    final = history[-1] if history else {}
    (out / "training.json").write_text(json.dumps({"training": training, "metrics": final},
                                                  indent=2) + "\n")
    write_vae_card(out, training, final, history)
    return final


def _garment_l1(out: torch.Tensor, target: torch.Tensor, weight: float) -> torch.Tensor:
    """L1 with the garment's pixels `weight` times heavier than the background's: plain L1
    over mostly white crops learned the garments' lightness and left them grey (validation
    ΔE 12.9 at step 1100 of the first run)."""
    w = 1.0 + weight * (target[:, 3:] + 1) / 2
    return ((out - target).abs() * w).mean() / w.mean()


def _set_scaling_factor(vae, train: dict, device: str) -> None:  # noqa: ANN001
    """Latents to unit variance for the denoiser (as Stable Diffusion's 0.18215, measured)."""
    vae.register_to_config(scaling_factor=1.0)
    idx = np.arange(min(512, len(train["seed"])))
    with torch.no_grad():
        z = torch.cat([encode_mean(vae, _targets(train, idx[i:i + 64]).to(device))
                       for i in range(0, len(idx), 64)])
    vae.register_to_config(scaling_factor=round(float(1.0 / z.std()), 5))


def _vae_grid(path: Path, vae, adapter, val: dict, n: int = 8) -> None:  # noqa: ANN001
    idx = np.arange(min(n, len(val["seed"])))
    target = _targets(val, idx)
    with torch.no_grad():
        z = encode_mean(vae, target)
        cols = [("truth", _to_uint8(target)), ("W", val["warp"][idx]),
                ("decoded", _to_uint8(decode_aligned(vae, z)))]
        if adapter is not None:
            cols.append(("aligned", _to_uint8(decode_aligned(vae, z, adapter,
                                                              _photos(val, idx)))))
    write_grid(path, cols)


# ---- the denoiser ---------------------------------------------------------------------------


def latent_source(vae, pairs: dict) -> str:  # noqa: ANN001
    """A digest of what the cached latents are made of: the pairs (their seeds, truths, warps
    and cutouts) and the VAE's encoder. Latents of other pairs, or of another encoder, are
    made again."""
    import hashlib

    digest = hashlib.sha256()
    for key in ("seed", "target", "warp", "validity", "cutout"):
        digest.update(np.ascontiguousarray(pairs[key]).tobytes())
    for module in (vae.encoder, vae.quant_conv):
        for value in (module.state_dict().values() if module is not None else ()):
            digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _latents(run: Path, vae, pairs: dict, name: str, latent: int,  # noqa: ANN001
             mirrored: bool = False) -> dict:
    """The frozen VAE's view of the pairs, cached: truth latents, W's and the cutout's
    pattern channels (`sampling.pattern_inputs`). With `mirrored`, also those of every pair
    seen in a mirror (keys `*_flip`): they are encoded, not flipped latents, because the
    VAE's kernels are not symmetric and a flipped latent decodes to another image."""
    path = run / f"latents-{name}.pt"
    n = len(pairs["seed"])
    cached: dict = {"n": n, "source": latent_source(vae, pairs)}
    if path.is_file():
        found = torch.load(path, weights_only=True)
        if found["n"] == n and found.get("source") == cached["source"]:
            cached = found
    flips = (False, True) if mirrored else (False,)
    todo = [f for f in flips if f"target{'_flip' if f else ''}" not in cached]
    for flipped in todo:
        tail = "_flip" if flipped else ""
        parts: dict[str, list] = {"target": [], "warp": [], "cutout": []}
        for i in tqdm(range(0, n, 64), desc=f"latents {name}{tail}"):
            idx = np.arange(i, min(i + 64, n))
            flip = np.full(len(idx), flipped)
            with torch.no_grad():
                parts["target"].append(encode_mean(vae, _targets(pairs, idx, flip)))
            parts["warp"].append(pattern_inputs(
                vae, mirror_rows(pairs["warp"][idx], flip, 2),
                mirror_rows(pairs["validity"][idx], flip, 2).astype(np.float32), latent))
            cut = mirror_rows(pairs["cutout"][idx], flip, 2)
            parts["cutout"].append(pattern_inputs(vae, cut[..., :3], cut[..., 3] / 255.0,
                                                  latent))
        cached.update({k + tail: torch.cat(v) for k, v in parts.items()})
    if todo:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(cached, path)
    return cached


def _latent_rows(lat: dict, key: str, idx: np.ndarray, flip: np.ndarray | None
                 ) -> torch.Tensor:
    """lat[key] at idx, the mirrored pair's latents (`_latents(mirrored=True)`) where flip."""
    x = lat[key][idx].clone()
    if flip is not None and flip.any():
        x[torch.from_numpy(flip)] = lat[f"{key}_flip"][idx[flip]]
    return x


def _conditions(pairs: dict, lat: dict, blank: torch.Tensor, idx: np.ndarray,
                drop: dict[str, np.ndarray], device: str, flip: np.ndarray | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(structure, pattern, embedding, crop) of a batch with the drops applied, as
    FlatLayGenerator.conditions builds them at inference; the rows where `flip` is set are
    the pair seen in a mirror (as `CoarseConditions.mirrored`: ê kept)."""
    structure = torch.from_numpy(mirror_rows(pairs["structure"][idx], flip, 3)).float() / 255.0
    pattern = _latent_rows(lat, "warp", idx, flip)
    noret = torch.from_numpy(drop["noretrieval"])
    pattern[noret] = _latent_rows(lat, "cutout", idx, flip)[noret]
    embedding = torch.from_numpy(pairs["embedding"][idx].astype(np.float32))
    crop = crop_tensor(mirror_rows(pairs["crop"][idx], flip, 2))
    hard = torch.from_numpy(drop["hard"] | drop["noretrieval"])
    soft = torch.from_numpy(drop["soft"] | drop["noretrieval"])
    pat = torch.from_numpy(drop["pattern"])
    structure[hard] = 0
    embedding[soft] = 0
    pattern[pat] = blank[: int(pat.sum())]
    crop[pat] = 0
    return structure.to(device), pattern.to(device), embedding.to(device), crop.to(device)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) sRGB in [0, 1] → CIELAB (D65), differentiable."""
    lin = torch.where(rgb > 0.04045, ((rgb.clamp(min=0) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                      [0.0193, 0.1192, 0.9505]], device=rgb.device, dtype=rgb.dtype)
    xyz = torch.einsum("ij,njhw->nihw", m, lin)
    xyz = xyz / torch.tensor([0.95047, 1.0, 1.08883], device=rgb.device,
                             dtype=rgb.dtype).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-6) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]),
                        200 * (f[:, 1] - f[:, 2])], 1)


def _garment_pixels(decoded: torch.Tensor, target: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(decoded RGB, true RGB, true garment mask (N, 1, R, R)), RGB in [0, 1], from decoded
    images and their targets, both (N, 4, R, R) in [-1, 1]: what the pixel losses compare."""
    mask = (target[:, 3:] > 0).float()
    return (decoded[:, :3].clamp(-1, 1) + 1) / 2, (target[:, :3] + 1) / 2, mask


def pixel_loss(decoded: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1 on the garment's RGB, mean Lab distance on it / 100) of decoded images against
    their targets, both (N, 4, R, R) in [-1, 1], inside the true alpha: what the benchmark's
    garment SSIM and ΔE look at."""
    rgb_out, rgb_true, mask = _garment_pixels(decoded, target)
    area = mask.sum().clamp(min=1.0)
    l1 = ((rgb_out - rgb_true).abs() * mask).sum() / (3 * area)
    lab = ((rgb_to_lab(rgb_out) - rgb_to_lab(rgb_true)).pow(2).sum(1, keepdim=True)
           + 1e-6).sqrt()
    return l1, (lab * mask).sum() / area / 100.0


def _symmetric_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """Pad the last two axes by mirroring with the edge repeated (scipy's 'reflect', which
    skimage's SSIM filters with; torch's 'reflect' leaves the edge out)."""
    x = torch.cat([x[..., :p].flip(-1), x, x[..., -p:].flip(-1)], -1)
    return torch.cat([x[..., :p, :].flip(-2), x, x[..., -p:, :].flip(-2)], -2)


def garment_ssim(decoded: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The benchmark's garment SSIM (`models.eval.quality.ssim_scores`: skimage's defaults, a
    7×7 uniform window with the sample covariance, the map averaged over RGB and inside the
    true alpha), differentiable: both (N, 4, R, R) in [-1, 1]."""
    win = 7
    x, y, mask = _garment_pixels(decoded, target)

    def mean(z: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(_symmetric_pad(z, win // 2), win, stride=1)

    ux, uy = mean(x), mean(y)
    cov = win * win / (win * win - 1)
    vx, vy = cov * (mean(x * x) - ux * ux), cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    smap = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return (smap.mean(1, keepdim=True) * mask).sum() / mask.sum().clamp(min=1.0)


@dataclass
class Budget:
    """When a run stops and how far along its schedule it is: a step count, or a wall-clock
    budget (`--minutes`), whichever is given (minutes win)."""

    steps: int
    minutes: float | None
    started: float = field(default_factory=time.time)
    # The share of the schedule that earlier invocations of the same run (its checkpoint)
    # went through: a resumed `--minutes` run spends its minutes on the rest of the cosine
    # instead of starting it again at the peak rate (a resumed decoder fine-tune that
    # restarted gave back ΔE 10.857 → 10.908, docs/generator.md).
    before: float = 0.0

    def progress(self, step: int) -> float:
        if self.minutes is not None:
            spent = (time.time() - self.started) / (60 * self.minutes)
            return self.before + (1.0 - self.before) * spent
        return step / max(1, self.steps)

    @classmethod
    def resumed(cls, steps: int, minutes: float | None, state: dict | None) -> Budget:
        """The budget of a run continuing from its checkpoint `state` (None: a new run),
        which records how far along the schedule it got (`progress`)."""
        return cls(steps, minutes, before=state.get("progress", 0.0) if state is not None
                   else 0.0)

    def finished(self, state: dict | None, run: Path) -> bool:
        """Whether the checkpoint `state` (None: a new run) already went through its whole
        schedule, said in one line: there is nothing left to resume."""
        if state is None or not self.done(state["step"]):
            return False
        tqdm.write(f"the run in {run} finished its schedule at step {state['step']}: nothing "
                   "to resume (another --run-dir starts a new run from the shipped weights)")
        return True

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0


def train_generator(cfg: GeneratorTrainConfig) -> dict:
    """The bridge's denoiser and conditioner on the frozen VAE's latents (`bridge`): x̂₀ from
    x_τ with a latent MSE, plus L1, Lab and SSIM losses on decoded garments for `pixel_batch`
    of each batch. Validation every `eval_minutes` and at the end; the EMA weights go to
    `cfg.out` whenever they beat what is there (garment SSIM up and ΔE down, or both level
    with one better)."""
    torch.manual_seed(cfg.seed)
    m, t = cfg.model, cfg.train["generator"]
    run = Path(cfg.run_dir) / "generator"
    run.mkdir(parents=True, exist_ok=True)
    train, val = _pairs(cfg)
    vae_dir = Path(cfg.vae_out)
    if not (vae_dir / "vae" / "config.json").is_file():
        raise FileNotFoundError(f"{vae_dir} holds no VAE; run `flatlay train vae` first")
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir / "vae", low_cpu_mem_usage=False).to(
        cfg.device).eval()
    vae.requires_grad_(False)
    adapter = _adapter(vae_dir, cfg.device)
    latent = m["unet"]["sample_size"]
    flip_p = t.get("flip", 0.0)
    lat_train = _latents(run, vae, train, "train", latent, mirrored=flip_p > 0)
    blank = blank_pattern(vae, t["batch"], m["resolution"], latent).cpu()
    schedule = BridgeSchedule(**m["bridge"])
    unet = build_denoiser(m["unet"]).to(cfg.device)
    cond = Conditioner(**m["conditioner"]).to(cfg.device)
    params = list(unet.parameters()) + list(cond.parameters())
    opt = torch.optim.AdamW(params, lr=t["lr"], weight_decay=1e-4)
    ema_unet, ema_cond = copy.deepcopy(unet).eval(), copy.deepcopy(cond).eval()
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, history, lineage, seconds = 0, [], [], 0.0
    out = Path(cfg.out)
    shipped = _shipped_bridge(out)
    parts = {"unet": unet, "cond": cond, "ema_unet": ema_unet, "ema_cond": ema_cond, "opt": opt}
    state = load_checkpoint(run, cfg.device)
    peak_lr, shipped_bridge = t["lr"], None
    if state is not None:
        load_states(state, parts)
        rng.bit_generator.state = state["rng"]
        gen.set_state(state["gen"])
        step, history = state["step"], state["history"]
        lineage, seconds = state.get("lineage", []), state.get("seconds", 0.0)
        peak_lr = state.get("peak_lr", t["lr"])
    elif shipped is not None:
        # No checkpoint (a fresh machine: runs/ does not travel), but a shipped bridge: this
        # run continues from it instead of from zero.
        shipped_bridge = load_bridge(out, cfg.device)
        unet.load_state_dict(_grown(shipped_bridge[0], unet.config.layers_per_block)
                             .state_dict())
        cond.load_state_dict(shipped_bridge[1].state_dict())
        ema_unet.load_state_dict(unet.state_dict())
        ema_cond.load_state_dict(cond.state_dict())
        lineage = previous_runs(out)
        # A warm start fine-tunes: the full peak rate pulled the bridge away from the decoder
        # fine-tuned on its samples (validation ΔE 12.51 → 13.2 in its first 20 minutes).
        peak_lr = t["warm_lr"]
        tqdm.write(f"no checkpoint in {run}: starting from the bridge in {out} "
                   f"(peak learning rate {peak_lr:g})")
    best = state.get("baseline") if state is not None else None
    if shipped is not None and best is None:
        best = _shipped_score(shipped_bridge or load_bridge(out, cfg.device), vae, adapter,
                              schedule, m, val, run)
    budget = Budget.resumed(cfg.steps or t["steps"], cfg.minutes, state)
    if budget.finished(state, run):
        return history[-1] if history else {}
    b, k = t["batch"], t.get("pixel_batch", 0)
    next_eval = time.time() + 60 * t["eval_minutes"]
    bar = tqdm(total=None if cfg.minutes else budget.steps, initial=step,
               desc="train generator")
    run_started, exported = time.time(), False
    while not budget.done(step):
        unet.train()
        cond.train()
        idx = rng.integers(len(train["seed"]), size=b)
        drop = {key: rng.random(b) < p for key, p in t["drop"].items()}
        # A garment in a mirror is the same garment: half the pairs seen flipped teach the
        # bridge the symmetry that mirror sampling otherwise buys by averaging.
        flip = rng.random(b) < flip_p if flip_p else None
        structure, pattern, embedding, crop = _conditions(train, lat_train, blank, idx, drop,
                                                          cfg.device, flip)
        coarse, validity = pattern[:, :-1], pattern[:, -1:]
        x0 = _latent_rows(lat_train, "target", idx, flip).to(cfg.device)
        noise = torch.randn(x0.shape, generator=gen).to(cfg.device)
        tau = torch.rand(b, generator=gen).to(cfg.device)
        state_t = schedule.noised(x0, coarse, tau, noise, schedule.kappa(validity))
        for group in opt.param_groups:
            group["lr"] = cosine_lr(int(1000 * budget.progress(step)), peak_lr, 20, 1000)
        inputs = DenoiserInputs(structure, coarse, validity, cond(embedding, crop))
        pred = predict_x0(unet, state_t, tau * 1000, inputs)
        loss = latent_loss = F.mse_loss(pred, x0)
        logs = {"latent": latent_loss.item()}
        if k:
            # The benchmark's view on a share of the batch: decoded through the frozen
            # decoder and adapter (with W and V, as the pipeline decodes).
            sel, sel_flip = idx[:k], None if flip is None else flip[:k]
            decoded = decode_aligned(vae, pred[:k], adapter,
                                     _photos(train, sel, sel_flip).to(cfg.device))
            target = _targets(train, sel, sel_flip).to(cfg.device)
            l1, lab = pixel_loss(decoded, target)
            ssim = garment_ssim(decoded, target)
            loss = loss + t["pixel_weight"] * l1 + t["lab_weight"] * lab \
                + t["ssim_weight"] * (1 - ssim)
            logs.update(l1=l1.item(), lab=lab.item(), ssim=ssim.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(t["ema"], (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_cond, cond, decay)
        step += 1
        bar.update(1)
        bar.set_postfix({key: f"{v:.4f}" for key, v in logs.items()})
        last = budget.done(step)
        if time.time() >= next_eval or last:
            next_eval = time.time() + 60 * t["eval_minutes"]
            generator = FlatLayGenerator(vae, adapter, ema_unet.eval(), ema_cond.eval(),
                                         schedule, _meta(m))
            metrics = _generator_eval(generator, val, run / f"val-{step:06d}.png")
            record_eval(run, history, {"step": step, "minutes": round(
                (seconds + time.time() - run_started) / 60, 1), "loss": round(loss.item(), 4),
                **metrics})
            if _beats(metrics, best):
                best = {key: metrics[key] for key in ("ssim_garment", "delta_e")}
                training = _training_record(cfg, "generator", seconds + time.time()
                                            - run_started, len(train["seed"]), len(val["seed"]))
                training["steps_this_run"] = step
                _export_generator(out, ema_unet, ema_cond, schedule, m, cfg, training,
                                  history, lineage)
                exported = True
        if step % cfg.ckpt_every == 0 or last:
            save_checkpoint(run, {**state_dicts(parts),
                                  "rng": rng.bit_generator.state, "gen": gen.get_state(),
                                  "step": step, "history": history, "lineage": lineage,
                                  "seconds": seconds + time.time() - run_started,
                                  "progress": budget.progress(step),
                                  "baseline": best if shipped is not None else None,
                                  "peak_lr": peak_lr})
    bar.close()
    final = history[-1] if history else {}
    if exported:
        tqdm.write(f"exported to {out}: validation SSIM_g {best['ssim_garment']}, "
                   f"ΔE {best['delta_e']} beat what was there")
    else:
        tqdm.write(f"not exported: no validation beat the weights in {out} ({best})")
        if shipped is not None and history:
            folder = write_candidate(cfg)
            tqdm.write(f"the run's last EMA weights are in {folder}: `flatlay train vae "
                       f"--generator {folder}` fine-tunes the decoder for them and ships the "
                       "two together if they beat the shipped pair")
    return final


def write_candidate(cfg: GeneratorTrainConfig) -> Path:
    """The EMA weights of the run's last checkpoint as a generator folder, `<run>/candidate`.

    Measured through a decoder fine-tuned for the generator before them, a generator that
    moved scores a worse ΔE than it would through a decoder fine-tuned for it (the decoder
    learned to undo the old one's colour errors), so a run that did not beat the shipped
    weights is kept for `flatlay train vae --generator`, which judges the pair."""
    m = cfg.model
    run = Path(cfg.run_dir) / "generator"
    state = load_checkpoint(run, "cpu")
    if state is None:
        raise FileNotFoundError(f"{run} holds no checkpoint")
    unet, cond = build_denoiser(m["unet"]), Conditioner(**m["conditioner"])
    unet.load_state_dict(state["ema_unet"])
    cond.load_state_dict(state["ema_cond"])
    history = state["history"]
    n_train = cfg.n_train or cfg.train["pairs"]["n_train"]
    training = _training_record(cfg, "generator", state["seconds"], n_train,
                                cfg.train["pairs"]["n_val"])
    training["steps_this_run"] = state["step"]
    folder = run / "candidate"
    _export_generator(folder, unet, cond, BridgeSchedule(**m["bridge"]), m, cfg, training,
                      history, state.get("lineage", []))
    return folder


def _grown(unet: torch.nn.Module, layers: int) -> torch.nn.Module:
    """The shipped denoiser with the `layers` per block of the one this run builds: deepened
    (the same function, `deepen_denoiser`) when that has more."""
    if unet.config.layers_per_block == layers:
        return unet
    tqdm.write(f"deepening the shipped denoiser: {unet.config.layers_per_block} → {layers} "
               "layers per block, the same function")
    return deepen_denoiser(unet, layers)


def _beats(metrics: dict, best: dict | None) -> bool:
    if best is None:
        return True
    ssim, de = metrics["ssim_garment"], metrics["delta_e"]
    return ssim >= best["ssim_garment"] and de <= best["delta_e"] and \
        (ssim > best["ssim_garment"] or de < best["delta_e"])


def load_bridge(out: Path, device: str) -> tuple:
    """The shipped bridge's denoiser and conditioner from `out`, frozen, in eval mode."""
    from diffusers import UNet2DConditionModel

    kw = {"torch_dtype": torch.float32, "low_cpu_mem_usage": False}
    unet = UNet2DConditionModel.from_pretrained(out / "unet", **kw)
    cond = Conditioner.from_pretrained(out / "conditioner", **kw)
    for part in (unet, cond):
        part.to(device).eval().requires_grad_(False)
    return unet, cond


def _shipped_score(bridge: tuple, vae, adapter, schedule: BridgeSchedule,  # noqa: ANN001
                   m: dict, val: dict, run: Path) -> dict:
    """The shipped generator's (`bridge`: its denoiser and conditioner) validation score
    through today's latent space: its recorded metrics came through the decoder of their
    day, and `flatlay train vae` may have improved the decoder since, so a run is compared
    with what ships now."""
    unet, cond = bridge
    metrics = _generator_eval(FlatLayGenerator(vae, adapter, unet, cond, schedule, _meta(m)),
                              val, run / "val-shipped.png")
    tqdm.write(f"the shipped generator through today's decoder: {metrics}")
    return {k: metrics[k] for k in ("ssim_garment", "delta_e")}


def _shipped_bridge(out: Path) -> dict | None:
    """The record of the bridge generator in `out`, or None (nothing there, or a noise-start
    model, which a bridge does not start from and is not compared with)."""
    record = out / "generator.json"
    if not (out / "unet" / "config.json").is_file() or not record.is_file():
        return None
    meta = json.loads(record.read_text())
    return meta if "bridge" in meta and meta.get("metrics") else None


def _meta(m: dict) -> dict:
    return {"resolution": m["resolution"], "sampling": m["sampling"]}


def _export_generator(out: Path, ema_unet, ema_cond, schedule: BridgeSchedule,  # noqa: ANN001
                      m: dict, cfg: GeneratorTrainConfig, training: dict,
                      history: list[dict], lineage: list[dict]) -> None:
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    # Stored in half precision (loaded as float32 on the CPU): half the bytes of the weights
    # budget, the generated flat-lays unchanged (docs/generator.md, *Half-precision storage*).
    copy.deepcopy(ema_unet).cpu().half().save_pretrained(out / "unet")
    copy.deepcopy(ema_cond).cpu().half().save_pretrained(out / "conditioner")
    if (out / "scheduler").is_dir():  # a noise-start model's; the bridge has none
        shutil.rmtree(out / "scheduler")
    final = history[-1]
    (out / "generator.json").write_text(json.dumps(
        {"architecture": "FlatLayGenerator", "config": cfg.config, **_meta(m),
         "bridge": schedule.to_dict(), "training": training, "metrics": final,
         "history": history, "lineage": lineage}, indent=2) + "\n")
    write_generator_card(out, training, final, history, lineage)


def _adapter(vae_dir: Path, device: str) -> DecoderAdapter | None:
    if not (vae_dir / "decoder_adapter" / "config.json").is_file():
        return None
    adapter = DecoderAdapter.from_pretrained(vae_dir / "decoder_adapter",
                                             low_cpu_mem_usage=False).to(device).eval()
    adapter.requires_grad_(False)
    return adapter


def _val_conditions(val: dict, idx: np.ndarray) -> list:
    from models.generator.conditioning import CoarseConditions

    return [CoarseConditions(warp=val["warp"][i], validity=val["validity"][i],
                             structure=val["structure"][i].astype(np.float32) / 255.0,
                             embedding=val["embedding"][i].astype(np.float32),
                             crop=val["crop"][i], cutout=val["cutout"][i]) for i in idx]


def _on_white(x: np.ndarray) -> np.ndarray:
    """(N, R, R, 4) float RGBA in [0, 1] → (N, R, R, 3) uint8 on white."""
    return (np.clip(x[..., :3] * x[..., 3:] + (1 - x[..., 3:]), 0, 1) * 255 + 0.5
            ).astype(np.uint8)


def _generator_eval(generator: FlatLayGenerator, val: dict, grid: Path) -> dict[str, float]:
    """SSIM and ΔE at the working resolution on every cached validation pair (full, and
    `noretrieval`), beside W itself and the coarse image ŷ decoded (where the bridge
    starts), and a grid of the first 8. All of them, not a first few: on 32 pairs the
    export rule once passed a pair that the 200-photo pipeline table rejected."""
    idx = np.arange(len(val["seed"]))
    conds = _val_conditions(val, idx)
    truth = val["target"][idx, ..., :3]
    mask = val["target"][idx, ..., 3] > 127
    seeds = [int(s) for s in val["seed"][idx]]

    def run(**kw: object) -> np.ndarray:
        return _on_white(np.concatenate([generator(conds[i:i + 16], seeds[i:i + 16], **kw)
                                         for i in range(0, len(conds), 16)]))

    full = run()
    noret = run(noretrieval=True)
    with torch.no_grad():
        coarse = _on_white(np.concatenate([
            generator.decode(generator.conditions(conds[i:i + 16]).coarse, conds[i:i + 16])
            for i in range(0, len(conds), 16)]))
    warp = val["warp"][idx].copy()
    warp[~val["validity"][idx]] = 255
    write_grid(grid, [("W", warp[:8]), ("coarse", coarse[:8]), ("generated", full[:8]),
                      ("noretrieval", noret[:8]), ("truth", truth[:8])])
    return {**image_scores(full, truth, mask),
            **{f"noretrieval_{k}": v for k, v in image_scores(noret, truth, mask).items()},
            **{f"coarse_{k}": v for k, v in image_scores(coarse, truth, mask).items()},
            **{f"warp_{k}": v for k, v in image_scores(warp, truth, mask).items()}}


def _training_record(cfg: GeneratorTrainConfig, what: str, seconds: float, n_train: int,
                     n_val: int) -> dict:
    start = SPLITS["train"][0]
    return {
        "command": f"flatlay train {what} --config {cfg.config}"
                   + (f" --minutes {cfg.minutes:g}" if cfg.minutes else "")
                   + (f" --steps {cfg.steps}" if cfg.steps and not cfg.minutes else "")
                   + (f" --n-train {cfg.n_train}" if cfg.n_train else "")
                   + (f" --generator {cfg.generator}" if cfg.generator else ""),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("model", "train")},
        "model_config": str(config_path("generator", cfg.config)),
        "train_config": str(config_path("generator", cfg.config, train=True)),
        "train_seeds": [start, start + n_train],
        "val_seeds": [SPLITS["val"][0], SPLITS["val"][0] + n_val],
        "seconds_this_run": round(seconds, 1),
        "machine": machine_line(cfg.device),
        **({"loss_weights": {k: cfg.train["generator"].get(k, 0.0) for k in (
            "pixel_weight", "lab_weight", "ssim_weight")},
            "flip": cfg.train["generator"].get("flip", 0.0)} if what == "generator" else {}),
    }


def _history_table(history: list[dict]) -> str:
    if not history:
        return "(no validation recorded)"
    keys = list(history[-1])
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys)
    rows = "\n".join("| " + " | ".join(str(h.get(k, "")) for k in keys) + " |" for h in history)
    return head + "\n" + rows


def write_vae_card(folder: Path, training: dict, metrics: dict, history: list[dict],
                   lineage: list[dict] | None = None) -> None:
    text = f"""# Flat-lay latent space ({folder.name})

A diffusers `AutoencoderKL` over RGBA flat-lays (RGB on white, then the garment alpha) at the
working resolution, 4× downsampling to a 4-channel latent, trained from scratch on the
garment world's true flat-lays; plus `decoder_adapter/`, the zero-initialised adapter that
feeds the warped photo W and its validity V into every decoder scale (`models.generator.
autoencoder`). Config: `{training['model_config']}`.

- Training command: `{training['command']}` (resumes from `runs/`)
- Data: garment-world train seeds {training['train_seeds'][0]}–{training['train_seeds'][1] - 1}
  through the shipped stages 1–5 (for W, V), validation seeds
  {training['val_seeds'][0]}–{training['val_seeds'][1] - 1}; model seed
  {training['config']['seed']}; on {training['machine']}.

## Validation (64 validation flat-lays at the working resolution)

{_history_table(history)}

`recon_*`: the truth encoded and decoded; `aligned_*`: the same through the adapter with W
and V (SSIM inside the true mask, ΔE2000 inside it).{_vae_lineage_text(training, lineage or [])}
"""
    (folder / "MODEL_CARD.md").write_text(text)


def _n_val(training: dict) -> int:
    """How many validation pairs a run's metrics were measured on (`_generator_eval`)."""
    first, end = training["val_seeds"]
    return end - first


def _vae_lineage_text(training: dict, lineage: list[dict]) -> str:
    """A fine-tuning run's card says what it changed and what it started from."""
    if not training.get("what"):
        return ""
    def row(r: dict) -> str:
        steps = r["training"].get("steps_this_run") or r["metrics"].get("step", "")
        got = [r["metrics"].get(k, "—") for k in ("aligned_ssim_garment", "aligned_delta_e",
                                                   "ssim_garment", "delta_e")]
        return f"| `{r['training']['command']}` | {steps} | " + " | ".join(map(str, got)) + " |"

    rows = "\n".join(row(r) for r in lineage)
    return f"""

## This run: {training['what']}

{training.get('steps_this_run')} steps in {training['seconds_this_run'] / 60:.0f} minutes
(`models/train/vae_decoder.py`): half of each batch is the generator's samples for a training
pair (the shipped one's, or with `--generator` the candidate's that shipped with it), half the
truth's latents with noise; garment-weighted L1, the garment's Lab distance and 1 − its
SSIM (loss weights {training.get('loss_weights', '—')}). `ssim_garment`/`delta_e` above:
that generator's validation output ({_n_val(training)} pairs) decoded through these weights;
step 0 is the shipped generator through the decoder this run started from.

| earlier run | steps | aligned SSIM_g | aligned ΔE | generated SSIM_g | generated ΔE |
|---|---|---|---|---|---|
{rows}
"""


def previous_runs(folder: Path) -> list[dict]:
    """The runs behind the weights in `folder`, oldest first, so a warm start keeps them."""
    record = folder / "generator.json"
    if not record.is_file():
        return []
    before = json.loads(record.read_text())
    training = before["training"]
    run = {"steps": training.get("steps_this_run") or training["config"]["steps"],
           "seconds": before["training"].get("seconds_this_run"),
           "command": before["training"]["command"], "metrics": before.get("metrics", {}),
           "history": before.get("history", [])}
    return [*before.get("lineage", []), run]


def _lineage_text(lineage: list[dict]) -> str:
    if not lineage:
        return ""
    total = sum(r["steps"] for r in lineage)
    rows = "\n".join(
        f"| {i + 1} | `{r['command']} --steps {r['steps']}` | {r['steps']} | "
        f"{r['metrics'].get('ssim_garment', '')} | {r['metrics'].get('delta_e', '')} |"
        for i, r in enumerate(lineage))
    return f"""
## Earlier runs these weights started from ({total} steps before this run)

Each run warm-started from the weights the previous one shipped (no checkpoint travels
with the repo), with its own cosine schedule; this run's step numbers count from its start.

| run | command | steps | ssim_garment | delta_e |
|---|---|---|---|---|
{rows}
"""


def _sampling_text(folder: Path) -> str:
    """How the service samples these weights, from their generator.json (written first)."""
    record = folder / "generator.json"
    s = json.loads(record.read_text()).get("sampling", {}) if record.is_file() else {}
    if not s:
        return ""
    return (f"- Sampling (`generator.json`, the pipelines' default): {s.get('steps')} steps at "
            f"{s.get('noise', 1.0):g} of the trained noise"
            + (", each asset averaged with its mirror image (`mirror`)" if s.get("mirror")
               else "") + "\n")


def write_generator_card(folder: Path, training: dict, metrics: dict,
                         history: list[dict], lineage: list[dict] | None = None) -> None:
    text = f"""# Flat-lay generator ({folder.name})

Stage 6 of DESIGN.md: a diffusers `UNet2DConditionModel` on the latent of `vae-tiny`,
trained as a bridge from the coarse latent ŷ (W through the VAE encoder) to the flat-lay's
(ResShift-style residual shifting, `models/generator/bridge.py`; schedule in `generator.json`),
predicting x̂₀ = ŷ + a correction through a zero-initialised output layer. Conditioned by Ŝ and
landmark heatmaps of L̂, ŷ and V as input channels, and by ê and the garment crop's reference
tokens (`conditioner/`) in cross-attention. Loss: latent MSE, plus L1, Lab distance and
1 − SSIM on the garment pixels of a few decoded images per batch (weights
{training.get('loss_weights', '—')}). Each condition level was dropped at random
in training, so the ablations and `noretrieval` are these weights with a level switched off;
each pair was seen in a mirror with probability {training.get('flip', 0.0):g} (`flip`).
Config: `{training['model_config']}`. Stored in half precision, computed in float32 on the CPU.

- Training command: `{training['command']}` (after `flatlay train vae`; resumes from
  `runs/`, else continues from these weights); this run: {training.get('steps_this_run')}
  steps in {training['seconds_this_run'] / 60:.0f} minutes
- Data: garment-world train seeds {training['train_seeds'][0]}–{training['train_seeds'][1] - 1}
  through the shipped parser, StructureNet, SLLE and warp (never the true structure);
  validation seeds {training['val_seeds'][0]}–{training['val_seeds'][1] - 1}; model seed
  {training['config']['seed']}; on {training['machine']}.
{_sampling_text(folder)}
## Validation ({_n_val(training)} validation pairs, working resolution, default step count)

`ssim_garment`/`delta_e`: the generated flat-lay; `noretrieval_*`: the same weights from the
cutout; `coarse_*`: ŷ decoded, where the bridge starts; `warp_*`: W itself on white.

{_history_table(history)}
{_lineage_text(lineage or [])}
The pipeline numbers (full resolution, every baseline and ablation) are in
`bench/results/quality-*.md` and `docs/generator.md`.
"""
    (folder / "MODEL_CARD.md").write_text(text)
