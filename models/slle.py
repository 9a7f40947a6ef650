"""Stage 4, SLLE fusion: K retrieved structures → one structure that fits the photo better.

For the K neighbours e_1..e_K of the photo's embedding e, the weights solve
    min_w ||e − Σ w_i e_i||² + λ||w||²   subject to  Σ w_i = 1
in closed form (the regularised local Gram system against a vector of ones, normalised).
Soft guidance ê = Σ w_i e_i; hard guidance L̂ = Σ w_i L_i (canonical frame) and Ŝ, the
weighted mean of the neighbours' signed distance fields after each silhouette is warped onto
L̂ (averaging raw masks would leave ghost outlines). Neighbours come from one category only:
landmarks of different categories cannot be averaged.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from models.warp import signed_distance, warp_to_landmarks
from structure_bank import Hit, StructureBank

DEFAULT_K = 8
DEFAULT_REG = 1e-2
# How many global hits vote on the category when the parser gives none.
CATEGORY_VOTERS = 10


@dataclass
class FusedStructure:
    """The hard and soft guidance of one photo.

    embedding: (D,) float32 unit vector (ê). landmarks: (L, 2) float32 in the canonical unit
    square (L̂). silhouette: (S, S) bool on the canonical canvas (Ŝ). neighbours: the bank
    entries used, with their weights (summing to 1) and cosine scores.
    """

    category: str
    embedding: np.ndarray
    landmarks: np.ndarray
    silhouette: np.ndarray
    neighbours: list[dict] = field(default_factory=list)


def slle_weights(query: np.ndarray, neighbours: np.ndarray, reg: float = DEFAULT_REG) -> np.ndarray:
    """LLE reconstruction weights of `query` (D,) from `neighbours` (K, D); sum to 1.

    `reg` scales the ridge term by the Gram matrix's trace, as in LLE, so it means the same
    whatever the embedding's scale.
    """
    z = np.asarray(neighbours, np.float64) - np.asarray(query, np.float64)[None]
    k = len(z)
    if k == 1:
        return np.ones(1)
    gram = z @ z.T
    gram += np.eye(k) * reg * max(float(np.trace(gram)), 1e-12)
    w = np.linalg.solve(gram, np.ones(k))
    return w / w.sum()


def choose_category(bank: StructureBank, query: np.ndarray, parsed: str | None = None) -> str:
    """The parser's category when it has one, else the majority of the top global hits
    (ties go to the best-ranked)."""
    if parsed is not None:
        return parsed
    hits = bank.search(query, CATEGORY_VOTERS)
    if not hits:
        raise ValueError("the structure bank is empty")
    votes = Counter(h.category for h in hits)
    best = max(votes.values())
    return next(h.category for h in hits if votes[h.category] == best)


def fuse_silhouettes(
    bank: StructureBank, rows: list[int], weights: np.ndarray, landmarks: np.ndarray
) -> np.ndarray:
    """Warp each entry's silhouette onto `landmarks`, average signed distances, threshold."""
    s = bank.silhouette_size
    sdf = np.zeros((s, s), np.float32)
    for row, w in zip(rows, weights, strict=True):
        warped = warp_to_landmarks(
            bank.entry_silhouette(row), bank.entry_landmarks(row), landmarks, (s, s)
        )
        sdf += float(w) * signed_distance(warped)
    return sdf < 0


def _neighbour_list(hits: list[Hit], weights: np.ndarray) -> list[dict]:
    return [{"id": h.id, "weight": round(float(w), 6), "score": round(h.score, 6)}
            for h, w in zip(hits, weights, strict=True)]


def fuse_structures(
    bank: StructureBank,
    query: np.ndarray,
    k: int = DEFAULT_K,
    category: str | None = None,
    reg: float = DEFAULT_REG,
) -> FusedStructure:
    """SLLE: retrieve K same-category neighbours of `query` (D,) and fuse them."""
    category = choose_category(bank, query, category)
    hits = bank.search(query, k, category=category)
    if not hits:
        raise ValueError(f"the structure bank has no {category!r} entries")
    return _fuse_hits(bank, query, hits, category, reg)


def _fuse_hits(bank: StructureBank, query: np.ndarray, hits: list[Hit], category: str,
               reg: float, landmarks: np.ndarray | None = None) -> FusedStructure:
    """LLE weights of `query` from the hits' embeddings; their landmarks (unless `landmarks`
    are given) and silhouettes fused with those weights."""
    rows = [h.row for h in hits]
    emb = bank.embeddings[rows]
    weights = slle_weights(query, emb, reg)
    fused_emb = weights @ emb
    fused_emb /= max(float(np.linalg.norm(fused_emb)), 1e-12)
    if landmarks is None:
        lms = np.stack([bank.entry_landmarks(r) for r in rows])
        landmarks = np.einsum("k,kld->ld", weights, lms)
    fused_lm = np.asarray(landmarks, np.float32)
    return FusedStructure(
        category=category,
        embedding=fused_emb.astype(np.float32),
        landmarks=fused_lm,
        silhouette=fuse_silhouettes(bank, rows, weights, fused_lm),
        neighbours=_neighbour_list(hits, weights),
    )


def nearest_structure(
    bank: StructureBank, query: np.ndarray, category: str | None = None
) -> FusedStructure:
    """The `nearest` baseline: the top-1 entry of the chosen category, no fusion."""
    category = choose_category(bank, query, category)
    hits = bank.search(query, 1, category=category)
    if not hits:
        raise ValueError(f"the structure bank has no {category!r} entries")
    top = hits[0]
    return FusedStructure(
        category=category,
        embedding=bank.embeddings[top.row].copy(),
        landmarks=bank.entry_landmarks(top.row).copy(),
        silhouette=bank.entry_silhouette(top.row),
        neighbours=_neighbour_list(hits, np.ones(1)),
    )


# Landmark-consistent neighbours ---------------------------------------------------------------
#
# The embedding ranks structures by how the photo looks; the parsed landmarks say where the
# garment's points are. Among the top CANDIDATES of the category by embedding, the K whose
# canonical landmarks a similarity transform best fits to the photo's visible landmarks are
# fused (SLLE weights as before). A similarity (not affine) keeps width-to-length ratios,
# sleeve lengths and hem widths as evidence instead of absorbing them.
#
# The landmarks L̂ are the plain mean of the SHAPE_K best-fitting candidates' landmarks, not
# the K neighbours' SLLE mix: the embedding's LLE weights reconstruct the embedding, which
# knows little of the shape (recall@5 0.02), and more fitted structures average out each
# one's own proportions. On the 200 validation photos of bench/results/fusion-val.md,
# canonical silhouette IoU 0.845 → 0.858 and landmark NME 0.0154 → 0.0137 with 64; the K
# silhouettes warped onto L̂ and ê keep the SLLE weights (the silhouettes' count or weights
# changed nothing once they sit on the same landmarks).

CANDIDATES = 256
SHAPE_K = 64
MIN_VISIBLE = 4


def similarity_residuals(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Mean distance left after the best similarity transform of `points` (N, 2) onto each
    of `targets` (M, N, 2): Umeyama's closed form, batched. Returns (M,)."""
    p = points - points.mean(0)
    t = targets - targets.mean(1, keepdims=True)
    u, s, vt = np.linalg.svd(np.einsum("mni,nj->mij", t, p))
    d = np.sign(np.linalg.det(u @ vt))
    d[d == 0] = 1.0
    rot = u @ (np.eye(2)[None] * np.stack([np.ones_like(d), d], -1)[:, None, :]) @ vt
    scale = (s[:, 0] + d * s[:, 1]) / max(float((p**2).sum()), 1e-12)
    fitted = scale[:, None, None] * np.einsum("nj,mij->mni", p, rot)
    return np.linalg.norm(fitted - t, axis=2).mean(1)


def fuse_with_landmarks(
    bank: StructureBank,
    query: np.ndarray,
    photo_landmarks: np.ndarray,
    visible: np.ndarray,
    category: str,
    k: int = DEFAULT_K,
    reg: float = DEFAULT_REG,
    candidates: int = CANDIDATES,
    fit: CandidateFit | None = None,
    shape_k: int = SHAPE_K,
) -> FusedStructure:
    """SLLE over the K candidates whose landmarks fit the photo's visible landmarks best, on
    the mean landmarks of the `shape_k` best-fitting ones (0: the K's SLLE mix).

    photo_landmarks: (L, 2) parsed, in the photo's pixels over its longer side (isotropic);
    visible: (L,) bool. With fewer than MIN_VISIBLE visible points it is `fuse_structures`.
    `fit`: the same arguments' `fit_candidates`, when the category decision already has it.
    """
    if fit is None:
        fit = fit_candidates(bank, query, photo_landmarks, visible, category, candidates)
    if fit is None:
        return fuse_structures(bank, query, k=k, category=category, reg=reg)
    order = np.argsort(fit.residuals, kind="stable")
    shape = None
    if shape_k > 0:
        shape = np.mean([bank.entry_landmarks(fit.hits[i].row) for i in order[:shape_k]], 0)
    return _fuse_hits(bank, query, [fit.hits[i] for i in order[:k]], category, reg,
                      landmarks=shape)


@dataclass(frozen=True)
class CandidateFit:
    """A category's top candidates by embedding and each one's similarity residual to the
    parsed visible landmarks (`n_visible` of them)."""

    hits: list[Hit]
    residuals: np.ndarray
    n_visible: int

    def score(self) -> float:
        """The best residual scaled by √(n / (n − 2)) for n visible points (a similarity
        spends 4 of the 2n coordinates, so a schema with fewer points would fit better by
        chance)."""
        n = self.n_visible
        return float(self.residuals.min()) * float(np.sqrt(n / (n - 2)))


def fit_candidates(bank: StructureBank, query: np.ndarray, photo_landmarks: np.ndarray,
                   visible: np.ndarray, category: str, candidates: int = CANDIDATES
                   ) -> CandidateFit | None:
    """The category's top `candidates` by embedding, each with its similarity residual to the
    visible landmarks; None with fewer than MIN_VISIBLE visible points. Raises ValueError
    when the bank has no entries of the category."""
    visible = np.asarray(visible, bool) & np.isfinite(photo_landmarks).all(1)
    if visible.sum() < MIN_VISIBLE:
        return None
    hits = bank.search(query, candidates, category=category)
    if not hits:
        raise ValueError(f"the structure bank has no {category!r} entries")
    pts = np.asarray(photo_landmarks, np.float64)[visible]
    targets = np.stack([bank.entry_landmarks(h.row)[visible] for h in hits]).astype(np.float64)
    return CandidateFit(hits, similarity_residuals(pts, targets), int(visible.sum()))


def landmark_fit(bank: StructureBank, query: np.ndarray, photo_landmarks: np.ndarray,
                 visible: np.ndarray, category: str, candidates: int = CANDIDATES
                 ) -> CandidateFit | None:
    """How well `category`'s structures can explain the parsed landmarks (its `score()`),
    as evidence for the category decision: None, no evidence either way, with too few
    visible points or no entries of the category."""
    try:
        return fit_candidates(bank, query, photo_landmarks, visible, category, candidates)
    except ValueError:
        return None


def structure_on_landmarks(bank: StructureBank, query: np.ndarray, category: str,
                           landmarks: np.ndarray, k: int = DEFAULT_K) -> FusedStructure:
    """A given structure (a person's landmarks) with a silhouette: the category's K nearest
    entries warped onto those landmarks and fused with equal weights."""
    hits = bank.search(query, k, category=category)
    if not hits:
        raise ValueError(f"the structure bank has no {category!r} entries")
    weights = np.full(len(hits), 1.0 / len(hits))
    landmarks = np.asarray(landmarks, np.float32)
    return FusedStructure(
        category=category,
        embedding=np.asarray(query, np.float32),
        landmarks=landmarks,
        silhouette=fuse_silhouettes(bank, [h.row for h in hits], weights, landmarks),
        neighbours=_neighbour_list(hits, weights),
    )
