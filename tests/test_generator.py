"""Stage 6: the generator's parts and the `ragdiffusion` pipelines with the shipped weights,
on garment-world photos whose true flat-lay is known."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from scipy import ndimage

from cli import main
from models.config import model_config, train_config
from models.garments import generate, num_landmarks
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
from models.generator.detail import generated_alpha, transfer_detail
from models.generator.sampling import DenoiserInputs, FlatLayGenerator, predict_x0
from models.pipeline import (
    PipelineOptions,
    StructureSpec,
    get_pipeline,
    pipeline_names,
    side_output_files,
)

SEED = 1_000_003  # validation split


def _iou(alpha: np.ndarray, truth: np.ndarray) -> float:
    size = truth.shape[0]
    a = np.asarray(Image.fromarray((alpha * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BOX)) > 127
    return float((a & truth).sum() / max(1, (a | truth).sum()))


def test_an_untrained_adapter_leaves_the_decoder_as_it_was() -> None:
    torch.manual_seed(0)
    vae = build_vae(model_config("generator", "tiny")["vae"]).eval()
    adapter = DecoderAdapter(targets=decoder_targets(vae))
    images = torch.rand(2, 4, 64, 64) * 2 - 1
    with torch.no_grad():
        z = encode_mean(vae, images)
        plain = vae.decode(z / vae.config.scaling_factor).sample
        assert torch.allclose(decode_aligned(vae, z), plain, atol=1e-5)
        assert torch.allclose(decode_aligned(vae, z, adapter, images), plain, atol=1e-5)
        # A trained (non-zero) head does change the decoding.
        torch.nn.init.normal_(adapter.heads[-1].weight)
        assert not torch.allclose(decode_aligned(vae, z, adapter, images), plain, atol=1e-3)


def test_detail_goes_only_where_the_photo_is_known_and_printed_only_on_prints() -> None:
    rng = np.random.default_rng(0)
    image = np.full((256, 256, 3), 128.0, np.float32)
    warp = rng.integers(0, 256, (256, 256, 3)).astype(np.uint8)
    validity = np.zeros((256, 256), bool)
    validity[:, :128] = True
    out = transfer_detail(image, warp, validity, resolution=64)
    assert np.abs(out[:, 160:] - 128).max() < 1e-3  # unknown: the generation as it is
    assert np.abs(out[40:-40, 20:100] - 128).mean() > 10  # known: the photo's texture
    assert transfer_detail(image, warp, validity, resolution=256) is image  # nothing above R
    # `printed` keeps the band of a print (stripes) and drops faint creases and noise.
    stripes = np.where((np.arange(256) // 4) % 2, 200, 60).astype(np.uint8)
    faint = 128 + rng.integers(-2, 3, (256, 256, 3))
    warp = np.concatenate([np.broadcast_to(stripes[None, :128, None], (256, 128, 3)),
                           faint[:, 128:]], 1).astype(np.uint8)
    everywhere = np.ones((256, 256), bool)
    out = transfer_detail(image, warp, everywhere, resolution=64, printed=True)
    assert np.abs(out[40:-40, 20:100] - 128).mean() > 20
    assert np.abs(out[40:-40, 170:230] - 128).max() < 1e-3
    # A wider band brings back a print's motifs the generation washed out: with the warp's
    # band replacing the image's own below the generator's scale, a generation that already
    # holds the print is left as it is, and a plain one gets it.
    motifs = np.where((np.arange(256) // 16) % 2, 200, 60).astype(np.float32)
    # (a generation upsampled from the working resolution has no band of its own above it)
    motifs = ndimage.gaussian_filter1d(motifs, 2.0, mode="wrap")
    held = np.broadcast_to(motifs[None, :, None], (256, 256, 3)).copy()
    fine = np.where((np.arange(256) // 2) % 2, 40, -40).astype(np.float32)
    printed_warp = np.clip(held + fine[:, None, None], 0, 255).astype(np.uint8)
    again = transfer_detail(held, printed_warp, everywhere, resolution=64, printed=True,
                            scale=4)
    inner = (slice(48, -48), slice(48, -48))
    target = printed_warp.astype(np.float32)[inner]
    assert np.abs(again[inner] - target).mean() < 6
    plain = transfer_detail(image, printed_warp, everywhere, resolution=64, printed=True,
                            scale=4)
    narrow = transfer_detail(image, printed_warp, everywhere, resolution=64, printed=True)
    assert np.abs(plain[inner] - target).mean() < np.abs(narrow[inner] - target).mean() / 2
    # The alpha's edge stays about one output pixel wide after an 8× upscale.
    small = np.zeros((32, 32), np.float32)
    small[8:24, 8:24] = 1
    big = generated_alpha(small, 256)
    ramp = ((big > 0.02) & (big < 0.98)).sum(1)[128]
    assert big[128, 128] == 1 and big[0, 0] == 0 and ramp <= 6



def test_the_coarse_grid_blur_is_the_gaussian_blur_of_the_canvas() -> None:
    """`smooth`, which the detail transfer uses at 1024² (σ 4 and 8), stays within about a
    grey level of the full-size Gaussian on a photo, whatever the map's shape."""
    from models.generator.detail import smooth

    photo = generate(SEED, size=1024).wild_image[..., 1].astype(np.float32)
    for sigma in (4.0, 8.0):
        d = np.abs(smooth(photo, sigma) - ndimage.gaussian_filter(photo, sigma))
        assert d.mean() < 0.3 and d.max() < 3, (sigma, d.mean(), d.max())
    odd = photo[:1000, :700]
    assert smooth(odd, 8.0).shape == odd.shape
    np.testing.assert_array_equal(smooth(odd, 2.0), ndimage.gaussian_filter(odd, 2.0))

def test_every_pipeline_and_ablation_is_registered() -> None:
    names = set(pipeline_names())
    assert {"noretrieval", "ragdiffusion", "ragdiffusion-nosoft", "ragdiffusion-nohard",
            "ragdiffusion-nopattern", "ragdiffusion-nodecode"} <= names


def test_missing_weights_name_the_command_that_makes_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="flatlay train vae"):
        FlatLayGenerator.from_pretrained(tmp_path / "vae", tmp_path / "gen")


def test_steps_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="steps 0"):
        PipelineOptions(steps=0)
    with pytest.raises(ValueError, match="steps 51"):
        PipelineOptions(steps=51)


@pytest.mark.parametrize("argv, message", [
    (["train", "vae", "--config", "huge"], "unknown generator config 'huge'"),
    (["train", "generator", "--steps", "0"], "--steps must be at least 1"),
])
def test_bad_training_arguments_exit_2(argv: list[str], message: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def ragdiffusion():  # noqa: ANN201
    p = get_pipeline("ragdiffusion")
    p.load()
    return p


@pytest.fixture(scope="module")
def sample():  # noqa: ANN201
    return generate(SEED, size=512)


@pytest.mark.slow
def test_ragdiffusion_gives_a_seeded_flat_lay_with_its_side_outputs(ragdiffusion,  # noqa: ANN001
                                                                  sample) -> None:  # noqa: ANN001
    options = PipelineOptions(output_size=512, seed=7)
    r = ragdiffusion(sample.wild_image, options)
    assert r.image.shape == (512, 512, 4) and r.alpha.shape == (512, 512)
    assert list(r.timings) == ragdiffusion.stages
    assert r.landmarks.shape == (num_landmarks(r.category), 2)
    assert set(side_output_files(r)) == {"mask", "landmarks", "neighbours", "overlay", "coarse"}
    assert r.coarse.shape == (512, 512, 3)
    again = ragdiffusion(sample.wild_image, options)
    assert np.array_equal(r.image, again.image)  # same seed, same asset
    other = ragdiffusion(sample.wild_image, PipelineOptions(output_size=512, seed=8))
    assert not np.array_equal(r.image, other.image)
    # A garment, where the truth has one, on a clean white canvas.
    assert _iou(r.alpha, sample.flat_mask) > 0.6
    assert (r.image[r.alpha == 0][:, :3] == 255).all()


@pytest.mark.slow
def test_bad_call_options_are_refused_by_name(ragdiffusion, sample) -> None:  # noqa: ANN001
    options = PipelineOptions(output_size=512)
    for bad, name in (({"detail": 1.5}, "detail 1.5"), ({"detail_where": "edges"}, "'edges'"),
                      ({"silhouette": "box"}, "'box'"), ({"detail_scale": 0.5}, "0.5 (1–32)"),
                      ({"detail_scale": 64}, "64 (1–32)")):
        with pytest.raises(ValueError, match=re.escape(name)):
            ragdiffusion(sample.wild_image, options, **bad)
    # A wider band is a different delivery of the same asset, inside the same silhouette.
    plain = ragdiffusion(sample.wild_image, options)
    wide = ragdiffusion(sample.wild_image, options, detail_scale=8)
    assert np.array_equal(plain.alpha, wide.alpha)


@pytest.mark.slow
def test_an_edited_structure_yields_a_garment_of_that_shape(ragdiffusion,  # noqa: ANN001
                                                          sample) -> None:  # noqa: ANN001
    r = ragdiffusion(sample.wild_image, PipelineOptions(output_size=512))
    lm = r.landmarks.copy()
    centre = lm.mean(0)
    narrow = (lm - centre) * (0.7, 1.0) + centre  # the same garment, 30% narrower
    edited = ragdiffusion(sample.wild_image, PipelineOptions(
        output_size=512, structure=StructureSpec(r.category, narrow.astype(np.float32))))
    assert np.allclose(edited.landmarks, narrow, atol=1e-5)

    def width(alpha: np.ndarray) -> int:
        cols = np.nonzero((alpha > 0.5).any(0))[0]
        return int(cols.max() - cols.min())

    assert width(edited.alpha) < 0.85 * width(r.alpha)


@pytest.mark.slow
def test_ablations_and_noretrieval_run_on_the_same_weights(sample) -> None:  # noqa: ANN001
    options = PipelineOptions(output_size=256, seed=1)
    outs = {}
    for name in ("ragdiffusion", "ragdiffusion-nosoft", "ragdiffusion-nohard",
                 "ragdiffusion-nopattern", "ragdiffusion-nodecode", "noretrieval"):
        p = get_pipeline(name)
        p.load()
        outs[name] = p(sample.wild_image, options)
        assert outs[name].image.shape == (256, 256, 4)
    for name, r in outs.items():
        if name != "ragdiffusion":  # each switches something off, so each differs
            assert not np.array_equal(r.image, outs["ragdiffusion"].image), name
    assert outs["noretrieval"].neighbours is None and outs["noretrieval"].coarse is None


@pytest.mark.slow
def test_training_checkpoints_resumes_and_ships_weights(tmp_path: Path) -> None:
    """Both training commands end to end at toy size, through the real stages 1–5."""
    from models.train.generator import GeneratorTrainConfig, train_generator, train_vae
    from models.train.vae_decoder import train_latent_space

    settings = train_config("generator", "tiny")
    settings["pairs"].update(n_train=6, n_val=3)
    settings["vae"].update(steps=2, adapter_steps=1, batch=2)
    settings["generator"].update(steps=2, batch=2, pixel_batch=1, eval_minutes=0)
    cfg = GeneratorTrainConfig(run_dir=str(tmp_path / "run"), vae_out=str(tmp_path / "vae"),
                               out=str(tmp_path / "gen"), train=settings, workers=1,
                               eval_every=2, ckpt_every=1)
    train_vae(cfg)
    assert (tmp_path / "run" / "vae" / "checkpoint.pt").is_file()
    assert list((tmp_path / "run" / "vae").glob("val-*.png"))
    vae_config = json.loads((tmp_path / "vae" / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] > 0 and vae_config["scaling_factor"] != 0.18215
    train_generator(cfg)
    # A longer run resumes at the step it reached.
    cfg.steps = 3
    settings["generator"]["steps"] = 3
    train_generator(cfg)
    state = torch.load(tmp_path / "run" / "generator" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3
    assert "flatlay train generator --config generator-tiny" in (tmp_path / "gen" / "MODEL_CARD.md"
                                                       ).read_text()
    gen = FlatLayGenerator.from_pretrained(tmp_path / "vae", tmp_path / "gen")
    assert gen.resolution == cfg.model["resolution"]
    # The card cites the config files, not this machine's paths.
    record = json.loads((tmp_path / "gen" / "generator.json").read_text())["training"]
    assert record["model_config"] == "models/configs/generator-tiny.json"
    assert record["train_config"] == "models/configs/train/generator-tiny.json"
    # With a generator on it, `train vae` fine-tunes the decoder and never the encoder.
    encoder = {k: v for k, v in load_file(tmp_path / "vae" / "vae" /
                                          "diffusion_pytorch_model.safetensors").items()
               if k.startswith(("encoder.", "quant_conv."))}
    settings["vae"].update(decoder_eval_minutes=0)
    cfg.steps = 2
    train_latent_space(cfg)
    history = [json.loads(line) for line in
               (tmp_path / "run" / "vae-decoder" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 1, 2]  # the shipped decoder first
    after = load_file(tmp_path / "vae" / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(after[k], v) for k, v in encoder.items())
    # A run's last EMA weights as a candidate, and the decoder fine-tuned for it: the baseline
    # is the shipped pair, the samples and evaluations are the candidate's.
    from models.train.generator import write_candidate
    from models.train.vae_decoder import _ship_candidate

    candidate = write_candidate(cfg)
    ema = torch.load(tmp_path / "run" / "generator" / "checkpoint.pt",
                     weights_only=False)["ema_unet"]
    saved = load_file(candidate / "unet" / "diffusion_pytorch_model.safetensors")
    # Stored in half precision.
    assert all(torch.equal(saved[k], v.half()) for k, v in ema.items())
    shutil.rmtree(tmp_path / "run" / "vae-decoder")
    cfg.generator = str(candidate)
    train_latent_space(cfg)
    history = [json.loads(line) for line in
               (tmp_path / "run" / "vae-decoder" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 1, 2]
    _ship_candidate(candidate, tmp_path / "gen", history[-1])
    shipped = load_file(tmp_path / "gen" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(shipped[k], v) for k, v in saved.items())
    record = json.loads((tmp_path / "gen" / "generator.json").read_text())
    assert record["metrics"]["delta_e"] == history[-1]["delta_e"]
    assert "--generator" in record["metrics"]["measured_with"]
    FlatLayGenerator.from_pretrained(tmp_path / "vae", tmp_path / "gen")
    # Without a shipped pair there is nothing to fine-tune for a candidate.
    with pytest.raises(ValueError, match="--generator"):
        train_latent_space(GeneratorTrainConfig(vae_out=str(tmp_path / "none"),
                                                out=str(tmp_path / "none-gen"),
                                                generator=str(candidate)))
    # A config with more layers per block than the shipped denoiser warm-starts from it
    # deepened: its weights where they were, the new layers' output convolutions at zero.
    layers = cfg.model["unet"]["layers_per_block"]
    cfg.model = {**cfg.model, "unet": {**cfg.model["unet"], "layers_per_block": layers + 1}}
    cfg.generator, cfg.steps = None, 1
    settings["generator"]["steps"] = 1
    (tmp_path / "run" / "generator" / "checkpoint.pt").unlink()
    train_generator(cfg)
    state = torch.load(tmp_path / "run" / "generator" / "checkpoint.pt",
                       weights_only=False)["unet"]
    assert torch.allclose(state["down_blocks.0.resnets.0.conv1.weight"],
                          shipped["down_blocks.0.resnets.0.conv1.weight"].float(), atol=1e-4)
    assert state[f"down_blocks.0.resnets.{layers}.conv2.weight"].abs().max() < 1e-4


def test_cached_pairs_and_latents_are_named_by_what_made_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pairs made behind another refiner (or parser, bank …) and latents of other pairs or
    another encoder are another data set: never read back as these."""
    from models import silhouette
    from models.train import common
    from models.train.generator import _latents
    from models.train.generator_pairs import pairs_folder

    before = pairs_folder(tmp_path, "val", 256, 128)
    assert before.name == f"val-256-128-{common.stages_stamp(refined=True, registered=True)}"
    assert common.stages_stamp(refined=True) != common.stages_stamp()
    refiner = tmp_path / "refiner"
    shutil.copytree(silhouette.SILHOUETTE_WEIGHTS, refiner)
    monkeypatch.setattr(silhouette, "SILHOUETTE_WEIGHTS", refiner)
    assert pairs_folder(tmp_path, "val", 256, 128) == before  # the same weights, elsewhere
    (refiner / "model.safetensors").write_bytes(b"other weights")
    assert pairs_folder(tmp_path, "val", 256, 128) != before

    rng = np.random.default_rng(0)
    pairs = {"seed": np.arange(2), "target": rng.integers(0, 256, (2, 32, 32, 4), np.uint8),
             "warp": rng.integers(0, 256, (2, 32, 32, 3), np.uint8),
             "validity": np.ones((2, 32, 32), bool),
             "cutout": rng.integers(0, 256, (2, 32, 32, 4), np.uint8)}
    vae = build_vae({**model_config("generator", "tiny")["vae"], "sample_size": 32}).eval()
    first = _latents(tmp_path, vae, pairs, "val", 8)["warp"]
    assert torch.equal(_latents(tmp_path, vae, pairs, "val", 8)["warp"], first)
    pairs["warp"] = 255 - pairs["warp"]  # other pairs of the same count
    second = _latents(tmp_path, vae, pairs, "val", 8)["warp"]
    assert not torch.equal(second, first)
    with torch.no_grad():
        vae.encoder.conv_in.weight.mul_(2)  # another encoder, the same pairs
    assert not torch.equal(_latents(tmp_path, vae, pairs, "val", 8)["warp"], second)


# --- The bridge ------------------------------------------------------------------------------

TINY_UNET = {**model_config("generator", "tiny")["unet"], "block_out_channels": [16, 32, 32],
             "attention_head_dim": 8, "norm_num_groups": 8, "cross_attention_dim": 32,
             "sample_size": 8}
TINY_COND = {"embed_dim": 16, "token_dim": 32, "soft_tokens": 2, "reference_size": 16,
             "reference_channels": [8, 16]}


def _batch(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, DenoiserInputs, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 4, 8, 8, generator=g)
    coarse = x0 + 0.5 * torch.randn(n, 4, 8, 8, generator=g)  # a corrupted flat-lay
    validity = (torch.rand(n, 1, 8, 8, generator=g) > 0.3).float()
    cond = Conditioner(**TINY_COND)
    tokens = cond(torch.randn(n, 16, generator=g), torch.rand(n, 3, 16, 16, generator=g))
    inputs = DenoiserInputs(torch.rand(n, 3, 8, 8, generator=g), coarse, validity,
                            tokens.detach())
    return x0, inputs, validity


def test_the_forward_process_runs_from_the_flat_lay_to_the_coarse_latent() -> None:
    schedule = BridgeSchedule()
    x0, inputs, validity = _batch()
    zero = torch.zeros_like(x0)
    kappa = schedule.kappa(validity)
    start = schedule.noised(x0, inputs.coarse, torch.zeros(3), zero, kappa)
    end = schedule.noised(x0, inputs.coarse, torch.ones(3), zero, kappa)
    assert torch.allclose(start, x0 + 0.04 * (inputs.coarse - x0))
    assert torch.allclose(end, x0 + 0.99 * (inputs.coarse - x0))
    # More noise where the photo does not know the garment.
    assert torch.equal(kappa[validity == 1], torch.full_like(kappa[validity == 1], 0.25))
    assert torch.equal(kappa[validity == 0], torch.full_like(kappa[validity == 0], 1.0))
    assert schedule.taus(4) == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    assert schedule.taus(1) == [1.0]
    with pytest.raises(ValueError, match="steps"):
        schedule.taus(51)


def test_an_untrained_bridge_returns_the_coarse_latent() -> None:
    schedule = BridgeSchedule()
    unet = build_denoiser(TINY_UNET).eval()
    _, inputs, validity = _batch()
    with torch.no_grad():
        for steps in (1, 4):
            out = schedule.sample(lambda x, t: predict_x0(unet, x, t, inputs), inputs.coarse,
                                  schedule.kappa(validity), [0, 1, 2], steps)
            assert torch.equal(out, inputs.coarse)


def test_bridge_sampling_is_seeded_per_asset() -> None:
    schedule = BridgeSchedule()
    unet = build_denoiser(TINY_UNET).eval()
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)  # as if trained: it corrects
    _, inputs, validity = _batch()
    kappa = schedule.kappa(validity)

    def run(seeds: list[int], rows: slice = slice(None)) -> torch.Tensor:
        part = DenoiserInputs(inputs.structure[rows], inputs.coarse[rows],
                              inputs.validity[rows], inputs.tokens[rows])
        with torch.no_grad():
            return schedule.sample(lambda x, t: predict_x0(unet, x, t, part), part.coarse,
                                   kappa[rows], seeds, 4)

    a = run([5, 6, 7])
    assert torch.equal(a, run([5, 6, 7]))
    assert not torch.equal(a[0], run([9, 6, 7])[0])
    assert torch.allclose(a[1:2], run([6], slice(1, 2)), atol=1e-5)  # alone as in a batch
    assert not torch.equal(a, inputs.coarse)
    # noise 0: every step from the posterior mean, the same whatever the seed.
    with torch.no_grad():
        quiet = [schedule.sample(lambda x, t: predict_x0(unet, x, t, inputs), inputs.coarse,
                                 kappa, seeds, 4, noise=0.0) for seeds in ([1, 2, 3], [7, 8, 9])]
    assert torch.equal(quiet[0], quiet[1])


def test_a_few_training_steps_lower_the_bridge_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    schedule = BridgeSchedule()
    unet = build_denoiser(TINY_UNET)
    x0, inputs, validity = _batch(4)
    g = torch.Generator().manual_seed(1)
    noise, tau = torch.randn(x0.shape, generator=g), torch.rand(4, generator=g)
    state = schedule.noised(x0, inputs.coarse, tau, noise, schedule.kappa(validity))
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.mse_loss(predict_x0(unet, state, tau * 1000, inputs), x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Step 0 is the coarse latent's own error; training corrects it.
    assert losses[0] == pytest.approx(float(((inputs.coarse - x0) ** 2).mean()), rel=1e-5)
    assert losses[-1] < 0.7 * losses[0]


def test_a_deepened_denoiser_computes_the_same_and_its_new_layers_learn() -> None:
    torch.manual_seed(0)
    unet = build_denoiser({**TINY_UNET, "layers_per_block": 1}).eval()
    with torch.no_grad():  # as if trained: every weight, the output layer too, non-zero
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x0, inputs, validity = _batch()
    tau = torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        before = predict_x0(unet, inputs.coarse, tau * 1000, inputs)
    for layers in (2, 3):
        deep = deepen_denoiser(unet, layers).eval()
        assert deep.config.layers_per_block == layers
        assert len(deep.down_blocks[0].resnets) == layers
        assert sum(p.numel() for p in deep.parameters()) > sum(
            p.numel() for p in unet.parameters())
        with torch.no_grad():
            assert torch.allclose(predict_x0(deep, inputs.coarse, tau * 1000, inputs), before,
                                  atol=1e-5)
    loss = torch.nn.functional.mse_loss(predict_x0(deep, inputs.coarse, tau * 1000, inputs), x0)
    loss.backward()
    # The zeroed layers are not stuck: their gradients are not zero.
    assert deep.down_blocks[0].resnets[2].conv2.weight.grad.abs().sum() > 0
    assert deep.up_blocks[0].resnets[1].conv2.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="deepen"):
        deepen_denoiser(deep, 2)


def test_the_generator_round_trips_through_its_folders(tmp_path: Path) -> None:
    vae = build_vae({**model_config("generator", "tiny")["vae"], "block_out_channels": [8, 16, 16],
                     "norm_num_groups": 8, "sample_size": 32}).eval()
    unet = build_denoiser(TINY_UNET).eval()
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    cond = Conditioner(**TINY_COND).eval()
    meta = {"resolution": 32, "sampling": {"steps": 3}, "bridge": BridgeSchedule().to_dict()}
    vae.save_pretrained(tmp_path / "vae" / "vae")
    unet.save_pretrained(tmp_path / "gen" / "unet")
    cond.save_pretrained(tmp_path / "gen" / "conditioner")
    (tmp_path / "gen" / "generator.json").write_text(json.dumps(meta))
    from models.generator.conditioning import CoarseConditions

    rng = np.random.default_rng(0)
    conds = [CoarseConditions(
        warp=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
        validity=rng.random((32, 32)) > 0.2, structure=rng.random((3, 8, 8), np.float32),
        embedding=rng.standard_normal(16).astype(np.float32),
        crop=rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
        cutout=rng.integers(0, 255, (32, 32, 4), dtype=np.uint8))]
    built = FlatLayGenerator(vae, None, unet, cond, BridgeSchedule(), meta)
    loaded = FlatLayGenerator.from_pretrained(tmp_path / "vae", tmp_path / "gen")
    assert loaded.default_steps == 3 and loaded.schedule == BridgeSchedule()
    assert np.allclose(built(conds, [4]), loaded(conds, [4]), atol=1e-5)
    # A noise-start model's folder (no bridge) is refused with what makes a bridge.
    (tmp_path / "gen" / "generator.json").write_text(json.dumps(
        {"resolution": 32, "sampling": {"steps": 8}}))
    with pytest.raises(FileNotFoundError, match="flatlay train generator"):
        FlatLayGenerator.from_pretrained(tmp_path / "vae", tmp_path / "gen")


def test_mirror_sampling_averages_the_asset_with_its_mirror_image() -> None:
    """`mirror`: the asset and its mirror image generated in one batch, the mirror's
    flat-lay flipped back and the two averaged."""
    from models.generator.conditioning import CoarseConditions

    vae = build_vae({**model_config("generator", "tiny")["vae"], "block_out_channels": [8, 16, 16],
                     "norm_num_groups": 8, "sample_size": 32}).eval()
    unet = build_denoiser(TINY_UNET).eval()
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    meta = {"resolution": 32, "sampling": {"steps": 2, "noise": 0.5, "mirror": True},
            "bridge": BridgeSchedule().to_dict()}
    gen = FlatLayGenerator(vae, None, unet, Conditioner(**TINY_COND).eval(), BridgeSchedule(),
                           meta)
    rng = np.random.default_rng(1)
    c = CoarseConditions(
        warp=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
        validity=rng.random((32, 32)) > 0.2, structure=rng.random((3, 8, 8), np.float32),
        embedding=rng.standard_normal(16).astype(np.float32),
        crop=rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
        cutout=rng.integers(0, 255, (32, 32, 4), dtype=np.uint8))
    m = c.mirrored()
    np.testing.assert_array_equal(m.warp, c.warp[:, ::-1])
    np.testing.assert_array_equal(m.structure, c.structure[..., ::-1])
    np.testing.assert_array_equal(m.embedding, c.embedding)
    twice = m.mirrored()
    for name in ("warp", "validity", "structure", "crop", "cutout"):
        np.testing.assert_array_equal(getattr(twice, name), getattr(c, name))
    own = gen.decode(gen.sample(gen.conditions([c]), [3]), [c])
    seen = gen.decode(gen.sample(gen.conditions([m]), [3]), [m])
    expect = (own + seen[:, :, ::-1]) / 2
    np.testing.assert_allclose(gen([c], [3]), expect, atol=1e-5)
    np.testing.assert_allclose(gen([c], [3], mirror=False), own, atol=1e-5)
    assert not np.allclose(expect, own, atol=1e-4)



def test_a_flipped_training_pair_is_the_pair_the_sampler_sees_in_a_mirror(tmp_path: Path
                                                                         ) -> None:
    """Training's flip augmentation gives the denoiser exactly the inputs mirror sampling
    gives it at inference (`CoarseConditions.mirrored`), with the mirrored pair's latents
    encoded rather than the latents flipped."""
    from models.generator.sampling import blank_pattern
    from models.train.generator import _conditions, _latent_rows, _latents, _val_conditions

    vae = build_vae({**model_config("generator", "tiny")["vae"], "block_out_channels": [8, 16, 16],
                     "norm_num_groups": 8, "sample_size": 32}).eval()
    gen = FlatLayGenerator(vae, None, build_denoiser(TINY_UNET).eval(),
                           Conditioner(**TINY_COND).eval(), BridgeSchedule(),
                           {"resolution": 32, "sampling": {"steps": 2}})
    rng = np.random.default_rng(2)
    n = 3
    pairs = {"seed": np.arange(n), "warp": rng.integers(0, 255, (n, 32, 32, 3), np.uint8),
             "validity": rng.random((n, 32, 32)) > 0.2,
             "structure": rng.integers(0, 255, (n, 3, 8, 8), np.uint8),
             "embedding": rng.standard_normal((n, 16)).astype(np.float16),
             "crop": rng.integers(0, 255, (n, 16, 16, 3), np.uint8),
             "cutout": rng.integers(0, 255, (n, 32, 32, 4), np.uint8),
             "target": rng.integers(0, 255, (n, 32, 32, 4), np.uint8)}
    lat = _latents(tmp_path, vae, pairs, "train", 8, mirrored=True)
    idx, flip = np.array([2, 0]), np.array([True, False])
    none = {key: np.zeros(2, bool) for key in ("soft", "hard", "pattern", "noretrieval")}
    blank = blank_pattern(vae, 2, 32, 8)
    structure, pattern, embedding, crop = _conditions(pairs, lat, blank, idx, none, "cpu", flip)
    conds = _val_conditions(pairs, idx)
    seen = gen.conditions([conds[0].mirrored(), conds[1]])
    torch.testing.assert_close(structure, seen.structure)
    torch.testing.assert_close(pattern[:, :-1], seen.coarse)
    torch.testing.assert_close(pattern[:, -1:], seen.validity)
    torch.testing.assert_close(crop, crop_tensor(np.stack([conds[0].mirrored().crop,
                                                           conds[1].crop])))
    torch.testing.assert_close(embedding, torch.from_numpy(
        pairs["embedding"][idx].astype(np.float32)))
    # The target: the mirrored flat-lay encoded, which a flipped latent is not.
    target = pairs["target"][2, :, ::-1]
    with torch.no_grad():
        expect = encode_mean(vae, images_to_tensor(target[None, ..., :3],
                                                   target[None, ..., 3] / 255.0))
    x0 = _latent_rows(lat, "target", idx, flip)
    torch.testing.assert_close(x0[:1], expect)
    assert not torch.allclose(x0[:1], lat["target"][2:3].flip(-1), atol=1e-3)
    torch.testing.assert_close(x0[1:], lat["target"][:1])
    # A cache without the mirrored latents gains them, and keeps what it had.
    plain = _latents(tmp_path / "plain", vae, pairs, "train", 8)
    assert "target_flip" not in plain
    grown = _latents(tmp_path / "plain", vae, pairs, "train", 8, mirrored=True)
    torch.testing.assert_close(grown["target"], plain["target"])
    torch.testing.assert_close(grown["warp_flip"], lat["warp_flip"])

def test_the_training_ssim_is_the_benchmarks_garment_ssim_and_its_gradient_restores_detail(
) -> None:
    from models.eval.quality import ssim_scores
    from models.train.generator import garment_ssim

    rng = np.random.default_rng(0)
    truth = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[4:33, 9:38] = True

    def tensor(rgb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.dstack([rgb / 127.5 - 1, mask * 2.0 - 1])).permute(
            2, 0, 1)[None].float()

    blurred = np.asarray(Image.fromarray(truth).resize((10, 10)).resize((40, 40)))
    # Edges included (skimage mirrors them with the edge pixel repeated).
    assert garment_ssim(tensor(blurred), tensor(truth)).item() == pytest.approx(
        ssim_scores(blurred, truth, mask)[0], abs=1e-4)
    out = tensor(blurred).requires_grad_(True)
    opt = torch.optim.Adam([out], lr=0.02)
    first = None
    for _ in range(30):
        loss = 1 - garment_ssim(out, tensor(truth))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_a_resumed_minutes_budget_continues_its_schedule(tmp_path: Path) -> None:
    """A `--minutes` run resumed from its checkpoint spends its new minutes on the rest of the
    cosine (not a restart at the peak rate); a finished one has nothing left to resume."""
    import time

    from models.train.generator import Budget

    fresh = Budget(steps=10, minutes=1.0, started=time.time() - 30)
    assert 0.49 < fresh.progress(0) < 0.55
    resumed = Budget(steps=10, minutes=1.0, started=time.time() - 30, before=0.6)
    assert 0.79 < resumed.progress(0) < 0.85  # 0.6 + 0.4 · ½
    assert not resumed.finished(None, tmp_path)
    assert not resumed.finished({"step": 5}, tmp_path)
    assert Budget(steps=10, minutes=1.0, before=1.0).finished({"step": 5}, tmp_path)
    # The checkpoint's recorded progress is where a resumed run starts.
    assert Budget.resumed(10, 1.0, {"step": 5, "progress": 0.6}).before == 0.6
    assert Budget.resumed(10, 1.0, None).before == 0.0
    # Counted in steps, a resumed run's step count is its place in the schedule.
    assert not Budget(steps=3, minutes=None, before=1.0).finished({"step": 2}, tmp_path)
    assert Budget(steps=3, minutes=None).finished({"step": 3}, tmp_path)
