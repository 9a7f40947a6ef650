"""The `ragdiffusion` pipelines: stages 1–5 (`StructureAligner`), then the diffusion pass
(stage 6) and compose (stage 7). Read top to bottom, `RAGDiffusionPipeline.__call__` is the
method:

1. parse, embed, retrieve + SLLE, warp: Ŝ, L̂, ê, W, V;
2. the generator bridges from W's latent to a flat-lay at the working resolution, under
   those conditions;
3. upsampled to the canvas, with the warp's detail above the model's resolution where V is
   known, inside the silhouette (Ŝ refined at the photo's edge, or the generated alpha);
   placed by the preset (`deliver`).

The ablations are the same weights with one condition level switched off (`DROP`), or
without the photo-aligned decoding (`ALIGNED = False`); `noretrieval` skips stages 2–5
altogether and starts from the parser's mask alone.
"""

from __future__ import annotations

import functools

import numpy as np

from models.pipeline import FlatLayResult, PipelineOptions, ProgressFn, StageClock
from models.pipelines.stages import (
    StructureAligner,
    deliver,
    load_parser,
    parse_garment,
)


@functools.cache
def load_generator():  # noqa: ANN201 (torch is imported lazily)
    """The generator, loaded once per process for every pipeline using it (on CUDA in half
    precision where a GPU is present)."""
    import torch

    from models.generator.sampling import FlatLayGenerator

    return FlatLayGenerator.from_pretrained(
        device="cuda" if torch.cuda.is_available() else "cpu")


class RAGDiffusionPipeline:
    """Retrieval-augmented structure, then the three-level-aligned diffusion pass."""

    name = "ragdiffusion"
    stages = ["parse", "embed", "retrieve", "warp", "generate", "compose"]
    DROP: frozenset[str] = frozenset()
    ALIGNED = True
    # The defaults of the call options `detail` and `silhouette` (bench/tune_ragdiffusion.py
    # measures them on the validation split; docs/generator.md has the table). Half the high
    # band, only on prints: no detail scores about as well but washes out the stripes and
    # prints a person sees at once, and the band everywhere brings back the photo's creases.
    # A band reaching below the generator's scale (`detail_scale` 8) brings back a print's
    # motifs but lost ΔE on test and held-out: an option, not the default.
    DETAIL = 0.5
    DETAIL_WHERE = "printed"
    DETAIL_SCALE = 1.0
    SILHOUETTE = "structure"

    def __init__(self) -> None:
        self.aligner = StructureAligner()
        self.generator = None

    def load(self) -> None:
        self.aligner.load()
        self.generator = load_generator()

    def __call__(
        self, rgb: np.ndarray, options: PipelineOptions, progress: ProgressFn | None = None,
        *, detail: float | None = None, silhouette: str | None = None,
        detail_where: str | None = None, detail_scale: float | None = None,
    ) -> FlatLayResult:
        """detail: the share of the full-resolution warp's high band added back where V is
        known (0: none, 1: all; default DETAIL). silhouette: where the garment's alpha comes
        from, "structure" (Ŝ refined at the photo's edge, as in `flatten`: an edited structure
        is obeyed exactly) or "generated" (the decoded alpha); default SILHOUETTE.
        detail_where: "known" (wherever V is) or "printed" (only where the warp's band is
        strong: prints, text, stripes); default DETAIL_WHERE."""
        from models.generator.conditioning import coarse_conditions
        from models.generator.detail import generated_alpha, transfer_detail, upscale

        if self.generator is None:
            self.load()
        detail = self.DETAIL if detail is None else detail
        silhouette = silhouette or self.SILHOUETTE
        detail_where = detail_where or self.DETAIL_WHERE
        detail_scale = self.DETAIL_SCALE if detail_scale is None else detail_scale
        if silhouette not in ("structure", "generated") or not 0 <= detail <= 1 or \
                detail_where not in ("known", "printed") or not 1 <= detail_scale <= 32:
            raise ValueError(f"silhouette {silhouette!r} (structure or generated), detail "
                             f"{detail} (0–1), detail_where {detail_where!r} (known or "
                             f"printed), detail_scale {detail_scale} (1–32)")
        gen = self.generator
        clock = StageClock(self.stages, progress)
        size = options.output_size
        coarse = self.aligner.align(rgb, options.structure, size, clock, options.hint)
        with clock.stage("generate"):
            cond = coarse_conditions(coarse, rgb, gen.resolution, gen.latent_size)
            out = gen([cond], [options.seed or 0], steps=options.steps, drop=self.DROP,
                      aligned=self.ALIGNED)[0]
        with clock.stage("compose"):
            if silhouette == "generated":
                alpha = generated_alpha(out[..., 3], size)
            else:
                alpha = self.aligner.silhouette(coarse, size)
            image = upscale(out[..., :3], size) * 255.0
            if self.ALIGNED:
                image = transfer_detail(image, coarse.warped.image, coarse.warped.validity,
                                        gen.resolution, detail,
                                        printed=detail_where == "printed",
                                        scale=detail_scale)
            return deliver(options, image, alpha, clock=clock, coarse=coarse, with_warp=True)


class NoSoftPipeline(RAGDiffusionPipeline):
    """Ablation: without the soft guidance ê."""

    name = "ragdiffusion-nosoft"
    DROP = frozenset({"soft"})


class NoHardPipeline(RAGDiffusionPipeline):
    """Ablation: without the hard guidance Ŝ and L̂ as spatial conditions."""

    name = "ragdiffusion-nohard"
    DROP = frozenset({"hard"})


class NoPatternPipeline(RAGDiffusionPipeline):
    """Ablation: without W, V and the reference tokens of the garment crop."""

    name = "ragdiffusion-nopattern"
    DROP = frozenset({"pattern"})


class NoDecodePipeline(RAGDiffusionPipeline):
    """Ablation: the plain VAE decoder, no full-resolution detail from the warp."""

    name = "ragdiffusion-nodecode"
    ALIGNED = False


class NoRetrievalPipeline:
    """Baseline: the same generator without soft and hard structure guidance; it sees the
    photo centred by the parser's mask alone (as `cutout` places it) and the garment crop."""

    name = "noretrieval"
    stages = ["parse", "generate", "compose"]

    def __init__(self) -> None:
        self.parser = None
        self.generator = None

    def load(self) -> None:
        self.parser = load_parser()
        self.generator = load_generator()

    def __call__(
        self, rgb: np.ndarray, options: PipelineOptions, progress: ProgressFn | None = None
    ) -> FlatLayResult:
        from models.generator.conditioning import CoarseConditions, cutout_layer, photo_gain
        from models.generator.detail import generated_alpha, upscale
        from models.structurenet import photo_tensor_uint8

        if self.generator is None:
            self.load()
        gen = self.generator
        clock = StageClock(self.stages, progress)
        with clock.stage("parse"):
            parsed = parse_garment(self.parser, rgb)
        with clock.stage("generate"):
            r, res = gen.latent_size, gen.resolution
            embed_dim = gen.conditioner.config.embed_dim
            cond = CoarseConditions(
                warp=np.full((res, res, 3), 255, np.uint8), validity=np.zeros((res, res), bool),
                structure=np.zeros((3, r, r), np.float32),
                embedding=np.zeros(embed_dim, np.float32),
                crop=photo_tensor_uint8(rgb, gen.conditioner.config.reference_size,
                                        parsed.mask > 0.5),
                cutout=cutout_layer(rgb, parsed.mask, res, photo_gain(rgb, parsed.mask)))
            out = gen([cond], [options.seed or 0], steps=options.steps, noretrieval=True)[0]
        with clock.stage("compose"):
            size = options.output_size
            alpha = generated_alpha(out[..., 3], size)
            image = upscale(out[..., :3], size) * 255.0
            return deliver(options, image, alpha, clock=clock, category=parsed.category,
                           confidence=parsed.category_probs.get(parsed.category))
