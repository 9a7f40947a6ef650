"""Stages 1–5 of DESIGN.md as one component that every retrieval pipeline calls, and the
last step they share (stage 7).

`StructureAligner.align`: parse (mask, category, landmarks), embed the garment crop
(StructureNet's photo tower), retrieve K same-category structures and fuse them by SLLE (or
take the nearest one, or the structure a request gave), and warp the photo onto the fused
landmarks: a `CoarseAlignment`. `deliver`: a garment on the canonical canvas → the
`FlatLayResult` every pipeline returns, placed by the preset, over the background, with its
overlay, so every pipeline fills every field the same way.

Models load once per process (`load_parser`, `load_retrieval_models`); torch and the models
are imported only when used.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.compose import (
    draw_overlay,
    layer_of,
    over_background,
    parse_background,
    place_garment,
    refine_alpha,
    silhouette_alpha,
)
from models.pipeline import (
    FlatLayResult,
    PipelineError,
    PipelineOptions,
    StageClock,
    StructureSpec,
    configured_bank_dir,
)
from models.presets import get_preset

if TYPE_CHECKING:
    from models.decision import CategoryEvidence

# Below this standard deviation (8-bit levels, every channel) a photo is a plain colour.
MIN_CONTRAST = 3.0
# Below this share of the photo the parser's mask is no garment.
MIN_GARMENT_SHARE = 0.002

@functools.cache
def load_parser():  # noqa: ANN201 (torch models are imported lazily)
    """The garment parser with the shipped category head, loaded once per process for every
    pipeline that uses it."""
    from models.parser import PARSER_WEIGHTS, GarmentParser
    from models.pattern import shipped_category_head

    return GarmentParser.from_pretrained(PARSER_WEIGHTS, head=shipped_category_head())


@functools.cache
def load_retrieval_models():  # noqa: ANN201 (torch models are imported lazily)
    """The parser and StructureNet, loaded once per process for every pipeline using them."""
    from models.structurenet import DEFAULT_WEIGHTS, StructureNet

    return load_parser(), StructureNet.from_pretrained(DEFAULT_WEIGHTS)


def parse_garment(parser, rgb: np.ndarray, category: str | None = None,  # noqa: ANN001, ANN201
                  with_head: bool = False):
    """Stage 1: the parser's reading of the photo, or PipelineError `garment_not_found` for a
    plain-coloured photo (a learned parser sees a garment even in a wall) or an empty mask."""
    if float(rgb[::4, ::4].reshape(-1, 3).std(0).max()) < MIN_CONTRAST:
        raise PipelineError("garment_not_found",
                            "the photo is a plain colour: no garment stands out")
    parsed = parser.parse(rgb, category=category, with_head=with_head)
    if (parsed.mask > 0.5).mean() < MIN_GARMENT_SHARE:
        raise PipelineError("garment_not_found", "no garment was found in this photo")
    return parsed


def parsed_mask(parser, rgb: np.ndarray) -> np.ndarray | None:  # noqa: ANN001
    """The parser's garment mask (H, W) bool, or None where stage 1 refuses the photo: the
    view stage 2 embeds is then the whole photo (training pairs and the retrieval benchmark
    make that view the same way)."""
    try:
        return parse_garment(parser, rgb).mask > 0.5
    except PipelineError:
        return None


@dataclass
class CategoryDecision:
    """What the category decision settles: the parse read with the category decided, its
    posterior, a hint's evidence and what the hint did, and the landmark fits measured on the
    way (category → `CandidateFit`, for stage 4 to reuse)."""

    parsed: Any
    category: str
    confidence: float
    evidence: Any = None
    hint: dict[str, Any] | None = None
    fits: dict = field(default_factory=dict)


@dataclass
class CoarseAlignment:
    """What stages 1–5 give the generator: the parse, the photo's structure embedding e
    (D,), the fused structure (ê, L̂, Ŝ, neighbours), the warp W/V on the canonical canvas,
    and the garment crop StructureNet saw, (P, P, 3) uint8."""

    parsed: Any
    query: np.ndarray
    fused: Any
    warped: Any
    crop: np.ndarray
    # The posterior of the category decided (None where the request gave the structure).
    category_confidence: float | None = None
    # What a request's text hint did (models.hints.hint_outcome), None without one.
    hint: dict[str, Any] | None = None
    # The decided parse's landmarks, isotropic photo frame (None where the request gave the
    # structure: then its landmarks say everything).
    photo_landmarks: np.ndarray | None = None
    # W's backward map, photo (rows, cols) of each canvas pixel, (2, S, S) float32.
    photo_map: np.ndarray | None = None


class StructureAligner:
    """Parse → embed → retrieve → fuse → warp (stages 1–5).

    fusion: "slle" (K same-category structures that best fit the parsed landmarks, fused by
    SLLE) or "nearest" (the single nearest structure, the `nearest` baseline). A `structure`
    given by the request replaces retrieval's landmarks.
    """

    K = 8
    # Fewer visible landmarks than this and the warp falls back to the box-to-box fit.
    MIN_VISIBLE = 4
    # Both chosen on 40 validation assets: a 1%-wide band where the photo's own edge wins
    # (IoU +0.001; 2% lost 0.01), and a stiff spline: with parsed landmarks this noisy
    # (NME ≈ 0.05 in the photo), smoothing 10 beat 1e-3 on garment SSIM (0.375 vs 0.345)
    # and ΔE (17.6 vs 18.2); stiffer still changed nothing.
    REFINE_BAND = 0.01
    TPS_SMOOTHING = 10.0
    # What a hint does to the fusion besides the category: "restrict" (the structures fused
    # come from those it does not speak against), "rerank" (the query moves towards it) or
    # "category" (nothing more); chosen on bench/results/hints-val.md. Behind stage 4's
    # mean of the 64 best-fitting structures, re-ranking moves which 256 candidates the fit
    # sees: on 100 hard validation photos a correct hint gives IoU 0.869 / NME 0.0129
    # against restricting's 0.864 / 0.0138, a wrong one 0.823 against 0.825.
    HINT_FUSION = "rerank"
    # The exponent of the retrieval vote in the category posterior (0: the parser alone).
    # On 200 validation photos (bench/results/category-val.md): 1 → category 0.800 / IoU
    # 0.826, 0.5 → 0.830 / 0.829, 0 → 0.835 / 0.820 (the vote picks a similar shape when
    # the category is wrong). Re-measured because the parser alone (`cutout`) had the higher
    # category accuracy in the quality tables; the choice is this validation table's.
    VOTE_WEIGHT = 0.5
    # The landmark fit's weight (0: unused): among the FIT_CATEGORIES likeliest categories,
    # each one's posterior is multiplied by its landmark residual to the power −FIT_WEIGHT,
    # so a category whose structures cannot explain the parsed points loses. On the same 200
    # validation photos (bench/results/category-val.md): 0 → 0.830 / IoU 0.829, 0.5 and 1 →
    # 0.845 / 0.831 (NME 0.0161 → 0.0159), 2 → 0.850 / 0.830.
    FIT_WEIGHT = 1.0
    FIT_CATEGORIES = 3
    # How many best-fitting structures L̂ averages; None: models.slle.SHAPE_K (where the
    # choice is explained). An attribute so bench/tune_fusion.py can weigh others.
    SHAPE_K: int | None = None

    def __init__(self, fusion: str = "slle", refine_silhouette: bool = True,
                 register_photo: bool = True) -> None:
        """refine_silhouette: after the warp, the learned refiner (`models.silhouette`)
        corrects Ŝ from the warped photo where retrieval decided the structure (a request's
        structure is kept as given); False serves Ŝ as fused — the refiner's own training
        data and its ablation. register_photo: then the learned registration
        (`models.registration`) corrects the spline's warp, under the same condition; False
        serves the spline's warp (registration's training data)."""
        if fusion not in ("slle", "nearest"):
            raise ValueError(f"fusion {fusion!r}: 'slle' or 'nearest'")
        self.fusion = fusion
        self.refine_silhouette = refine_silhouette
        self.register_photo = register_photo
        self.registration = None
        self.parser = None
        self.structurenet = None
        self.refiner = None
        self.decider = None
        self.bank = None
        self._bank_stamp: tuple[str, float] | None = None

    def load(self) -> None:
        self.parser, self.structurenet = load_retrieval_models()
        if self.refine_silhouette:
            from models.silhouette import shipped_refiner

            self.refiner = shipped_refiner()
        if self.register_photo:
            from models.registration import shipped_registration

            self.registration = shipped_registration()
        from models.decision import shipped_decider

        self.decider = shipped_decider()
        self.fresh_bank()

    def fresh_bank(self):  # noqa: ANN201 (structure_bank is imported lazily)
        """The bank, reloaded when its file changed (`POST /structures` appends to it)."""
        from models.structurenet import embedded_by
        from structure_bank import StructureBank
        from structure_bank.builder import default_bank_path

        configured = configured_bank_dir()
        path = configured or default_bank_path()
        if configured is not None:
            from structure_bank.runtime import ensure_runtime_bank

            ensure_runtime_bank(path)
        stamp = (str(path), (Path(path) / "bank.json").stat().st_mtime)
        if self.bank is None or stamp != self._bank_stamp:
            bank = StructureBank.load(path)
            if self.structurenet is not None and not embedded_by(bank, self.structurenet):
                bank = self._reembedded(bank, path, configured is not None)
                stamp = (str(path), (Path(path) / "bank.json").stat().st_mtime)
            self.bank, self._bank_stamp = bank, stamp
        return self.bank

    def _reembedded(self, bank, path: Path, runtime: bool):  # noqa: ANN001, ANN202
        """A bank embedded by other StructureNet weights (a runtime bank copied before an
        upgrade), embedded again by ours: a runtime bank on disk, once, under its lock; the
        shipped bank in memory (`flatlay bank build` rebuilds it with the weights)."""
        import logging

        from models.structurenet import embedded_by, reembed_bank
        from structure_bank.runtime import migrate_runtime_bank

        def again(old):  # noqa: ANN001, ANN202
            return reembed_bank(old, self.structurenet)

        logging.getLogger(__name__).warning(
            "structure bank %s was embedded by other StructureNet weights (%s); embedding "
            "its %d structures again", path, bank.model.get("fingerprint"), len(bank))
        if not runtime:
            return again(bank)
        return migrate_runtime_bank(path, lambda b: embedded_by(b, self.structurenet), again)

    def fuse(self, bank, query: np.ndarray, parsed, category: str,  # noqa: ANN001, ANN201
             evidence=None, fit=None):  # noqa: ANN001
        """Stage 4 for a decided category: SLLE over the structures that best fit the parsed
        landmarks, or the nearest structure; with a hint's `evidence`, among the category's
        structures the hint does not speak against (HINT_FUSION). `fit`: the category
        decision's `CandidateFit` for this parse and query (unused once a hint changes
        either the bank or the query)."""
        from models.hints import reranked_query, restrict_rows
        from models.slle import CANDIDATES, SHAPE_K, fuse_with_landmarks, nearest_structure

        if evidence is not None:
            fit = None
        if evidence is not None and self.HINT_FUSION == "restrict":
            bank = bank.subset(restrict_rows(evidence, bank.categories, category,
                                             minimum=max(CANDIDATES, self.K)))
        elif evidence is not None and self.HINT_FUSION == "rerank":
            query = reranked_query(query, evidence)
        if self.fusion == "nearest":
            return nearest_structure(bank, query, category=category)
        return fuse_with_landmarks(bank, query, _isotropic_landmarks(parsed),
                                   parsed.visibility, category, k=self.K, fit=fit,
                                   shape_k=SHAPE_K if self.SHAPE_K is None else self.SHAPE_K)

    def category_evidence(self, parsed, bank, query: np.ndarray  # noqa: ANN001
                          ) -> tuple[CategoryEvidence, dict]:
        """The evidence for the decision (`models.decision.CategoryEvidence`: the parser's
        belief, the vote of the query's top global hits, add-half smoothed, and the landmark
        fit of the FIT_CATEGORIES likeliest by parser × vote^VOTE_WEIGHT), and the fits
        measured on the way (category → `CandidateFit`, for stage 4 to reuse)."""
        from collections import Counter

        from models.decision import CategoryEvidence
        from models.garments import CATEGORIES
        from models.slle import CATEGORY_VOTERS

        log_p = np.log(np.array([parsed.category_probs[c] for c in CATEGORIES]) + 1e-6)
        votes = Counter(h.category for h in bank.search(query, CATEGORY_VOTERS))
        log_votes = np.log(np.array([votes.get(c, 0) for c in CATEGORIES]) + 0.5)
        log_fits, measured = self._log_fits(parsed, bank, query,
                                            log_p + self.VOTE_WEIGHT * log_votes)
        head = None if parsed.head_probs is None else np.log(parsed.head_probs + 1e-6)
        return CategoryEvidence(parser=log_p, vote=log_votes, fit=log_fits, head=head), measured

    def category_posterior(self, parsed, bank, query: np.ndarray  # noqa: ANN001
                           ) -> tuple[dict[str, float], dict]:
        """The category posterior from `category_evidence`, weighed by the trained decision
        (`models.decision`, `self.decider`) or, where none ships, the hand-set rule: the
        parser's belief × vote^VOTE_WEIGHT × fit^−FIT_WEIGHT; and the fits measured.
        StructureNet's category head lowered accuracy."""
        from models.decision import CategoryDecider, DecisionNet

        evidence, measured = self.category_evidence(parsed, bank, query)
        decider = self.decider or CategoryDecider(DecisionNet.rule(self.VOTE_WEIGHT,
                                                                   self.FIT_WEIGHT))
        return decider.posterior(evidence), measured

    def _log_fits(self, parsed, bank, query: np.ndarray,  # noqa: ANN001
                  log_p: np.ndarray) -> tuple[np.ndarray, dict]:
        """log landmark residual per category (CATEGORIES order): the parse read with each of
        the FIT_CATEGORIES likeliest schemas against that category's structures; the others,
        and a likely one without enough visible points, get the worst residual measured
        (all zero, no evidence, when fewer than two could be measured). Also the fits
        themselves, category → `CandidateFit`."""
        from models.garments import CATEGORIES
        from models.slle import landmark_fit

        logs: dict[int, float] = {}
        measured: dict = {}
        for i in np.argsort(-log_p, kind="stable")[: self.FIT_CATEGORIES]:
            category = CATEGORIES[i]
            read = parsed if category == parsed.category else self.parser.read_as(parsed,
                                                                                  category)
            fit = landmark_fit(bank, query, _isotropic_landmarks(read), read.visibility, category)
            if fit is not None:
                measured[category] = fit
                logs[int(i)] = float(np.log(max(fit.score(), 1e-4)))
        if len(logs) < 2:
            return np.zeros(len(CATEGORIES)), measured
        worst = max(logs.values())
        return np.array([logs.get(i, worst) for i in range(len(CATEGORIES))]), measured

    def embed(self, rgb: np.ndarray, garment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 2: the photo tower's embedding e (D,) of the view it sees (the garment's crop
        and mask, (P, P, 4) uint8), and that view."""
        import torch

        from models.structurenet import embed_photos, normalise_photos, photo_view

        view = photo_view(self.structurenet, rgb, garment)
        with torch.inference_mode():
            return embed_photos(self.structurenet, normalise_photos(view[None]))[0], view

    def decide(self, parsed, bank, query: np.ndarray,  # noqa: ANN001
               hint: str | None = None) -> CategoryDecision:
        """The category decision (stage 3, before the fusion): the posterior of
        `category_posterior`, with a text hint's evidence beside it, and the parse read with
        the category decided."""
        posterior, fits = self.category_posterior(parsed, bank, query)
        photo, evidence, outcome = posterior, None, None
        if hint:
            from models.hints import combine_categories, hint_evidence, hint_outcome

            evidence = hint_evidence(hint, bank)
            posterior = combine_categories(photo, evidence)
        category = max(posterior, key=posterior.__getitem__)
        if evidence is not None:
            outcome = hint_outcome(evidence, photo, category)
        if category != parsed.category:
            parsed = self.parser.read_as(parsed, category)
        return CategoryDecision(parsed=parsed, category=category,
                                confidence=posterior[category], evidence=evidence,
                                hint=outcome, fits=fits)

    def align(self, rgb: np.ndarray, given: StructureSpec | None, size: int,
              clock: StageClock, hint: str | None = None) -> CoarseAlignment:
        """Stages 1–5: parse, embed, retrieve + fuse (or the given structure), and the warp of
        the photo onto the fused landmarks on a `size`² canonical canvas. A text `hint` is
        evidence beside the photo for the category and the structures fused (a given
        structure overrides both)."""
        from models.silhouette import VIEW_SIZE
        from models.slle import structure_on_landmarks
        from models.warp import photo_to_canvas_map, resample_photo

        if self.parser is None:
            self.load()
        with clock.stage("parse"):
            # The head's reading is evidence for the decision, made only without a given
            # structure.
            parsed = parse_garment(self.parser, rgb, given.category if given else None,
                                   with_head=given is None)
            garment = parsed.mask > 0.5
        with clock.stage("embed"):
            query, view = self.embed(rgb, garment)
            crop = view[..., :3]
        with clock.stage("retrieve"):
            bank = self.fresh_bank()
            confidence, outcome, decision = None, None, None
            if given is None:
                decision = self.decide(parsed, bank, query, hint)
                parsed, confidence, outcome = decision.parsed, decision.confidence, decision.hint
            elif hint:
                outcome = {"text": hint, "won": "structure",
                           "why": "the request's structure decides the category and shape"}
            try:
                if decision is not None:
                    fused = self.fuse(bank, query, parsed, decision.category,
                                      decision.evidence, decision.fits.get(decision.category))
                else:
                    fused = structure_on_landmarks(bank, query, given.category,
                                                   given.landmarks, self.K)
            except ValueError as exc:
                raise PipelineError("structure_unavailable", str(exc)) from None
        with clock.stage("warp"):
            src, dst = self._correspondences(parsed, fused, garment)
            photo_map = photo_to_canvas_map(src, dst, rgb.shape[:2], size, self.TPS_SMOOTHING)
            registering = self.registration is not None and given is None
            if registering and size > VIEW_SIZE:
                # The refiner and registration read the spline's warp at 128²: sampled at
                # VIEW_SIZE² for them, the full-resolution photo is sampled once, through the
                # registered map, instead of twice.
                view = resample_photo(rgb, parsed.mask, photo_to_canvas_map(
                    src, dst, rgb.shape[:2], VIEW_SIZE, self.TPS_SMOOTHING))
            else:
                view = warped = resample_photo(rgb, parsed.mask, photo_map)
            if self.refiner is not None and given is None:
                fused = replace(fused, silhouette=self.refiner.refine(fused.silhouette, view))
            if registering:
                warped, photo_map = self.registration.register(rgb, parsed.mask, photo_map,
                                                               fused.silhouette, view)
        return CoarseAlignment(parsed=parsed, query=query, fused=fused, warped=warped,
                               crop=crop, category_confidence=confidence, hint=outcome,
                               photo_landmarks=None if given is not None
                               else _isotropic_landmarks(parsed), photo_map=photo_map)

    def silhouette(self, coarse: CoarseAlignment, size: int) -> np.ndarray:
        """The garment's (size, size) alpha: Ŝ, refined against the warped photo near its
        edge."""
        alpha, sdf = silhouette_alpha(coarse.fused.silhouette, size)
        return refine_alpha(alpha, sdf, coarse.warped.mask, self.REFINE_BAND)

    def _correspondences(self, parsed, fused, garment: np.ndarray  # noqa: ANN001
                         ) -> tuple[np.ndarray, np.ndarray]:
        """(photo unit square, canvas unit square) point pairs for the warp: the visible
        parsed landmarks and their fused positions; with too few, the garment's box corners
        onto the structure's box corners."""
        vis = parsed.visibility & np.isfinite(parsed.landmarks).all(1)
        if vis.sum() >= self.MIN_VISIBLE:
            return parsed.landmarks[vis], fused.landmarks[vis]
        h, w = garment.shape
        ys, xs = np.nonzero(garment)
        photo_box = np.array([[xs.min(), ys.min()], [xs.max(), ys.min()],
                              [xs.max(), ys.max()], [xs.min(), ys.max()]], np.float64)
        photo_box = (photo_box + 0.5) / (w, h)
        sil = fused.silhouette
        sy, sx = np.nonzero(sil)
        n = sil.shape[0]
        canvas_box = (np.array([[sx.min(), sy.min()], [sx.max(), sy.min()],
                                [sx.max(), sy.max()], [sx.min(), sy.max()]], np.float64)
                      + 0.5) / n
        return photo_box, canvas_box


def _isotropic_landmarks(parsed) -> np.ndarray:  # noqa: ANN001
    """Parsed landmarks in the photo's pixels over its longer side (the unit square of a
    non-square photo would stretch them)."""
    h, w = parsed.mask.shape
    return parsed.landmarks * (w, h) / max(h, w)


def deliver(options: PipelineOptions, image: np.ndarray, alpha: np.ndarray, *,
            clock: StageClock, coarse: CoarseAlignment | None = None, with_warp: bool = False,
            category: str | None = None, landmarks: np.ndarray | None = None,
            confidence: float | None = None) -> FlatLayResult:
    """A garment on the canonical canvas → the delivered result (stage 7).

    image: (S, S, 3) uint8 or float in [0, 255]; alpha: (S, S) in [0, 1]. With `coarse`,
    category, landmarks, neighbours, the confidence and W come from it; without (a pipeline
    that did not retrieve), from the keywords; `with_warp` keeps W as the `coarse` side
    output (the generator's pipelines: what they started from). Placed by the preset's fill
    where it has one, over the background, with the structure drawn over it (the overlay).
    """
    if coarse is not None:
        fused = coarse.fused
        category, landmarks = fused.category, fused.landmarks
        confidence = coarse.category_confidence
    size = options.output_size
    image = np.clip(np.asarray(image, np.float32) + 0.5, 0, 255).astype(np.uint8) \
        if image.dtype != np.uint8 else image
    layer = layer_of(image, alpha)
    canvas_landmarks = None if landmarks is None else landmarks.copy()
    fill = get_preset(options.preset).fill
    if fill is not None and (alpha > 0.5).any():
        placed = place_garment(image, alpha, size, fill)
        layer = placed.layer
        if canvas_landmarks is not None:
            canvas_landmarks = placed.to_canvas(canvas_landmarks, (size, size))
    canvas = over_background(layer, parse_background(options.background))
    out_alpha = layer[..., 3].astype(np.float32) / 255.0
    overlay = draw_overlay(canvas, out_alpha, canvas_landmarks, category)
    return FlatLayResult(
        image=canvas, alpha=out_alpha, category=category, landmarks=landmarks,
        canvas_landmarks=canvas_landmarks,
        neighbours=coarse.fused.neighbours if coarse is not None else None, overlay=overlay,
        timings=clock.timings, category_confidence=confidence,
        coarse=coarse.warped.image if with_warp and coarse is not None else None,
        texture=(coarse.warped.image, np.asarray(alpha, np.float32) * coarse.warped.validity)
        if with_warp and coarse is not None else None,
        hint=coarse.hint if coarse is not None else None,
        photo_landmarks=coarse.photo_landmarks if coarse is not None else None)
