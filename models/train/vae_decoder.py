"""`flatlay train vae` once a latent space ships: fine-tune its decoder and adapter, never its
encoder, so the generator's latents (and the generator) stay valid.

The shipped decoder learned on the truth's latents (plus 0.2 noise for the adapter); at
inference it decodes the generator's latents, which carry their own, systematic errors, and
it was trained with an RGB L1 alone, so its colour drifts (ΔE 9.4 on the truth itself). Here
half of each batch is what the shipped generator samples for a training pair (the latents the
pipeline really decodes) and half the truth's latents with noise; the loss is the garment-
weighted L1 plus the garment's Lab distance. The weights go to `models/weights/vae-*` only
when the generator's validation output through them beats the shipped decoder's (garment SSIM
up and ΔE down), measured at the start of the run on the same pairs.
"""

from __future__ import annotations

import copy
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.generator.autoencoder import DecoderAdapter, decode_aligned, decoder_targets
from models.generator.bridge import BridgeSchedule
from models.generator.sampling import DenoiserInputs, FlatLayGenerator, blank_pattern, predict_x0
from models.train.common import (
    cosine_lr,
    load_checkpoint,
    load_states,
    record_eval,
    save_checkpoint,
    state_dicts,
)
from models.train.generator import (
    Budget,
    GeneratorTrainConfig,
    _adapter,
    _beats,
    _conditions,
    _ema_update,
    _garment_l1,
    _generator_eval,
    _latents,
    _meta,
    _pairs,
    _photos,
    _targets,
    _training_record,
    _vae_eval,
    garment_ssim,
    load_bridge,
    pixel_loss,
    train_vae,
    write_generator_card,
    write_vae_card,
)

# The share of each batch decoded from the shipped generator's samples (the rest: the truth's
# latents with noise, so the decoder keeps decoding clean latents well).
GENERATED_SHARE = 0.5
TRUTH_NOISE = 0.2


def train_latent_space(cfg: GeneratorTrainConfig) -> dict:
    """`flatlay train vae`: with a VAE and a generator on it shipped, keep the encoder and
    fine-tune the decoder (`finetune_decoder`); otherwise train the VAE from scratch."""
    if (Path(cfg.vae_out) / "vae" / "config.json").is_file() and \
            (Path(cfg.out) / "generator.json").is_file():
        return finetune_decoder(cfg)
    if cfg.generator:
        raise ValueError("--generator fine-tunes a shipped decoder for a candidate generator; "
                         f"{cfg.vae_out} and {cfg.out} must hold a VAE and a generator first")
    return train_vae(cfg)


def _shipped(cfg: GeneratorTrainConfig):  # noqa: ANN202
    """The shipped VAE and adapter (trainable; a fresh adapter if none ships) and the bridge
    the decoder is fine-tuned for (frozen; `cfg.generator`, else the shipped one) with its
    schedule and generator.json."""
    from diffusers import AutoencoderKL

    vae_dir, gen_dir = Path(cfg.vae_out), Path(cfg.generator or cfg.out)
    if not (gen_dir / "generator.json").is_file():
        raise FileNotFoundError(f"{gen_dir} holds no generator (generator.json)")
    vae = AutoencoderKL.from_pretrained(vae_dir / "vae", low_cpu_mem_usage=False).to(cfg.device)
    adapter = _adapter(vae_dir, cfg.device) or DecoderAdapter(
        targets=decoder_targets(vae), width=cfg.model["adapter"]["width"]).to(cfg.device)
    adapter.requires_grad_(True)
    meta = json.loads((gen_dir / "generator.json").read_text())
    unet, cond = load_bridge(gen_dir, cfg.device)
    return vae, adapter, unet, cond, BridgeSchedule(**meta["bridge"]), meta


def _evaluate(vae, adapter, unet, cond, schedule, m: dict, val: dict,  # noqa: ANN001
              grid: Path) -> dict:
    vae.eval()
    adapter.eval()
    with torch.no_grad():
        recon = _vae_eval(vae, adapter, val)
    generator = FlatLayGenerator(vae, adapter, unet, cond, schedule, _meta(m))
    generated = _generator_eval(generator, val, grid)
    return {**{k: generated[k] for k in ("ssim_garment", "delta_e", "noretrieval_ssim_garment",
                                         "noretrieval_delta_e")}, **recon}


def finetune_decoder(cfg: GeneratorTrainConfig) -> dict:
    """Fine-tune the shipped VAE's decoder and adapter for `--minutes` (or `--steps`); export
    to `cfg.vae_out` only on an improvement of the generator's validation output."""
    torch.manual_seed(cfg.seed)
    m, t = cfg.model, cfg.train["vae"]
    run = Path(cfg.run_dir) / "vae-decoder"
    run.mkdir(parents=True, exist_ok=True)
    train, val = _pairs(cfg)
    vae, adapter, unet, cond, schedule, meta = _shipped(cfg)
    vae.encoder.requires_grad_(False)
    if vae.quant_conv is not None:
        vae.quant_conv.requires_grad_(False)
    latent = m["unet"]["sample_size"]
    with torch.no_grad():
        lat_train = _latents(Path(cfg.run_dir) / "generator", vae, train, "train", latent)
    params = [p for p in vae.parameters() if p.requires_grad] + list(adapter.parameters())
    lr = t["decoder_lr"]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ema_vae, ema_adapter = copy.deepcopy(vae).eval(), copy.deepcopy(adapter).eval()
    rng = np.random.default_rng(cfg.seed)
    step, history, baseline = 0, [], None
    parts = {"vae": vae, "adapter": adapter, "ema_vae": ema_vae, "ema_adapter": ema_adapter,
             "opt": opt}
    state = load_checkpoint(run, cfg.device)
    if state is not None:
        load_states(state, parts)
        rng.bit_generator.state = state["rng"]
        step, history, baseline = state["step"], state["history"], state["baseline"]
    if baseline is None:
        # What ships: the shipped generator through the shipped decoder (a candidate
        # generator must beat it together with the decoder fine-tuned for it).
        shipped = load_bridge(Path(cfg.out), cfg.device) if cfg.generator else (unet, cond)
        baseline = _evaluate(ema_vae, ema_adapter, *shipped, schedule, m, val,
                             run / "val-000000.png")
        record_eval(run, history, {"step": 0, "minutes": 0.0, "loss": None, **baseline})
    best = {k: baseline[k] for k in ("ssim_garment", "delta_e")}
    lineage = state["lineage"] if state is not None else _lineage(Path(cfg.vae_out))
    b = t["batch"]
    k = int(round(GENERATED_SHARE * b))
    blank = blank_pattern(vae, b, m["resolution"], latent).cpu()
    no_drop = {key: np.zeros(k, bool) for key in ("soft", "hard", "pattern", "noretrieval")}
    budget = Budget.resumed(cfg.steps or t["steps"], cfg.minutes, state)
    if budget.finished(state, run):
        return history[-1] if history else {}
    bar = tqdm(total=None if cfg.minutes else budget.steps, initial=step,
               desc="fine-tune decoder")
    next_eval, started, exported = time.time() + 60 * t["decoder_eval_minutes"], time.time(), False
    while not budget.done(step):
        vae.train()
        adapter.train()
        idx = rng.integers(len(train["seed"]), size=b)
        with torch.no_grad():
            structure, pattern, embedding, crop = _conditions(train, lat_train, blank, idx[:k],
                                                              no_drop, cfg.device)
            inputs = DenoiserInputs(structure, pattern[:, :-1], pattern[:, -1:],
                                    cond(embedding, crop))
            seeds = rng.integers(2**31, size=k).tolist()
            generated = schedule.sample(partial(predict_x0, unet, inputs=inputs),
                                        inputs.coarse, schedule.kappa(inputs.validity), seeds,
                                        int(meta["sampling"]["steps"]),
                                        float(meta["sampling"].get("noise", 1.0)))
            truth = lat_train["target"][idx[k:]].to(cfg.device)
            z = torch.cat([generated, truth + TRUTH_NOISE * torch.randn_like(truth)])
        for group in opt.param_groups:
            group["lr"] = cosine_lr(int(1000 * budget.progress(step)), lr, 20, 1000)
        target = _targets(train, idx).to(cfg.device)
        out = decode_aligned(vae, z, adapter, _photos(train, idx).to(cfg.device))
        l1 = _garment_l1(out, target, t.get("garment_weight", 0.0))
        _, lab = pixel_loss(out, target)
        ssim = garment_ssim(out, target)
        loss = l1 + t["decoder_lab_weight"] * lab + t["decoder_ssim_weight"] * (1 - ssim)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.998, (1 + step) / (10 + step))
        _ema_update(ema_vae, vae, decay)
        _ema_update(ema_adapter, adapter, decay)
        step += 1
        bar.update(1)
        bar.set_postfix(l1=f"{l1.item():.4f}", lab=f"{lab.item():.4f}", ssim=f"{ssim.item():.4f}")
        last = budget.done(step)
        if time.time() >= next_eval or last:
            next_eval = time.time() + 60 * t["decoder_eval_minutes"]
            metrics = _evaluate(ema_vae, ema_adapter, unet, cond, schedule, m, val,
                                run / f"val-{step:06d}.png")
            record_eval(run, history, {"step": step, "minutes": round(
                (time.time() - started) / 60, 1), "loss": round(loss.item(), 4), **metrics})
            if _beats(metrics, best):
                best = {key: metrics[key] for key in ("ssim_garment", "delta_e")}
                _export(cfg, ema_vae, ema_adapter, time.time() - started, step, train, val,
                        history, lineage)
                if cfg.generator:
                    _ship_candidate(Path(cfg.generator), Path(cfg.out), metrics)
                exported = True
        if step % cfg.ckpt_every == 0 or last:
            save_checkpoint(run, {**state_dicts(parts), "rng": rng.bit_generator.state,
                                  "step": step, "progress": budget.progress(step),
                                  "history": history, "baseline": baseline,
                                  "lineage": lineage})
    bar.close()
    pair = f" and {cfg.generator} to {cfg.out}" if cfg.generator else ""
    tqdm.write(f"exported to {cfg.vae_out}{pair}: the generator's validation output through "
               f"the new decoder {best} beat the shipped pair's" if exported else
               f"not exported: no validation beat the shipped pair ({best})")
    return history[-1] if history else {}


def _ship_candidate(candidate: Path, out: Path, metrics: dict) -> None:
    """The candidate generator into `out`, its record's metrics those of the pair that beat
    the shipped one (its own were measured through the decoder before)."""
    import shutil

    for part in ("unet", "conditioner"):
        shutil.rmtree(out / part, ignore_errors=True)
        shutil.copytree(candidate / part, out / part)
    record = json.loads((candidate / "generator.json").read_text())
    training = record["training"]
    record["metrics"] = {**record["metrics"], **metrics,
                         "step": training["steps_this_run"],
                         "minutes": round(training["seconds_this_run"] / 60, 1),
                         "measured_with": "the decoder fine-tuned for it (flatlay train vae "
                                          "--generator)"}
    record["history"] = [*record["history"], record["metrics"]]
    (out / "generator.json").write_text(json.dumps(record, indent=2) + "\n")
    write_generator_card(out, record["training"], record["metrics"], record["history"],
                         record["lineage"])


def _lineage(out: Path) -> list[dict]:
    """The runs behind the weights in `out` before this one, oldest first."""
    record = out / "training.json"
    if not record.is_file():
        return []
    before = json.loads(record.read_text())
    return [*before.get("lineage", []),
            {k: before[k] for k in ("training", "metrics") if k in before}]


def _export(cfg: GeneratorTrainConfig, vae, adapter, seconds: float, step: int,  # noqa: ANN001
            train: dict, val: dict, history: list[dict], lineage: list[dict]) -> None:
    out = Path(cfg.vae_out)
    copy.deepcopy(vae).cpu().save_pretrained(out / "vae")
    copy.deepcopy(adapter).cpu().eval().save_pretrained(out / "decoder_adapter")
    training = _training_record(cfg, "vae", seconds, len(train["seed"]), len(val["seed"]))
    training["steps_this_run"] = step
    training["what"] = "decoder and adapter fine-tuned; encoder frozen"
    training["loss_weights"] = {k: cfg.train["vae"][k] for k in (
        "garment_weight", "decoder_lab_weight", "decoder_ssim_weight")}
    (out / "training.json").write_text(json.dumps(
        {"training": training, "metrics": history[-1], "history": history,
         "lineage": lineage}, indent=2) + "\n")
    write_vae_card(out, training, history[-1], history, lineage)
