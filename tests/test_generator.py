"""Stage 6: the generator's parts and the `ragdiffusion` pipelines with the shipped weights,
on garment-world photos whose true flat-lay is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli import main
from models.garments import generate, num_landmarks
from models.generator.autoencoder import (
    DecoderAdapter,
    build_vae,
    decode_aligned,
    decoder_targets,
    encode_mean,
)
from models.generator.conditioning import coarse_conditions
from models.generator.detail import generated_alpha, transfer_detail
from models.generator.sampling import FlatLayGenerator
from models.pipeline import (
    PipelineOptions,
    StageClock,
    StructureSpec,
    get_pipeline,
    pipeline_names,
    side_output_files,
)
from models.train.generator import generator_config

SEED = 1_000_003  # validation split


def _iou(alpha: np.ndarray, truth: np.ndarray) -> float:
    size = truth.shape[0]
    a = np.asarray(Image.fromarray((alpha * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BOX)) > 127
    return float((a & truth).sum() / max(1, (a | truth).sum()))


def test_an_untrained_adapter_leaves_the_decoder_as_it_was() -> None:
    torch.manual_seed(0)
    vae = build_vae(generator_config("tiny")["vae"]).eval()
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


def test_detail_goes_only_where_the_photo_is_known() -> None:
    rng = np.random.default_rng(0)
    image = np.full((256, 256, 3), 128.0, np.float32)
    warp = rng.integers(0, 256, (256, 256, 3)).astype(np.uint8)
    validity = np.zeros((256, 256), bool)
    validity[:, :128] = True
    out = transfer_detail(image, warp, validity, resolution=64)
    assert np.abs(out[:, 160:] - 128).max() < 1e-3  # unknown: the generation as it is
    assert np.abs(out[40:-40, 20:100] - 128).mean() > 10  # known: the photo's texture
    assert transfer_detail(image, warp, validity, resolution=256) is image  # nothing above R
    # The alpha's edge stays about one output pixel wide after an 8× upscale.
    small = np.zeros((32, 32), np.float32)
    small[8:24, 8:24] = 1
    big = generated_alpha(small, 256)
    ramp = ((big > 0.02) & (big < 0.98)).sum(1)[128]
    assert big[128, 128] == 1 and big[0, 0] == 0 and ramp <= 6


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
def test_strength_starts_the_sampler_from_the_warp(ragdiffusion, sample) -> None:  # noqa: ANN001
    gen = ragdiffusion.generator
    coarse = ragdiffusion.align(sample.wild_image, None, 256,
                                StageClock(ragdiffusion.stages, None))
    cond = coarse_conditions(coarse, sample.wild_image, gen.resolution, gen.latent_size)
    spatial, _ = gen.conditions([cond])
    warp = gen.decode(spatial[:, 3:7], [cond])[0]  # W's own latent, decoded

    def distance(strength: float) -> float:
        out = gen([cond], [0], strength=strength)[0]
        return float(np.abs(out[..., :3] - warp[..., :3]).mean())

    # A short tail of the schedule from W's noised latent stays near W; pure noise does not.
    assert distance(0.1) < 0.5 * distance(1.0)
    with pytest.raises(ValueError, match="strength"):
        gen([cond], [0], strength=0.0)


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

    model = generator_config("tiny")
    model["pairs"].update(n_train=6, n_val=3)
    model["train_vae"].update(steps=2, adapter_steps=1, batch=2)
    model["train_generator"].update(steps=2, batch=2)
    cfg = GeneratorTrainConfig(run_dir=str(tmp_path / "run"), vae_out=str(tmp_path / "vae"),
                               out=str(tmp_path / "gen"), model=model, workers=1,
                               eval_every=2, ckpt_every=1)
    train_vae(cfg)
    assert (tmp_path / "run" / "vae" / "checkpoint.pt").is_file()
    assert list((tmp_path / "run" / "vae").glob("val-*.png"))
    vae_config = json.loads((tmp_path / "vae" / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] > 0 and vae_config["scaling_factor"] != 0.18215
    train_generator(cfg)
    # A longer run resumes at the step it reached.
    cfg.steps = 3
    model["train_generator"]["steps"] = 3
    train_generator(cfg)
    state = torch.load(tmp_path / "run" / "generator" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3
    assert "flatlay train generator --config tiny" in (tmp_path / "gen" / "MODEL_CARD.md"
                                                       ).read_text()
    gen = FlatLayGenerator.from_pretrained(tmp_path / "vae", tmp_path / "gen")
    assert gen.resolution == model["resolution"]
