"""Stage 1, parse: where is the garment in the photo, what is it, where are its landmarks.

Two parsers. The classical one: a colour model of the background learned from the image
border, the largest connected foreground component, holes filled (what a simple background
remover does). The learned one (`GarmentParser`): a small CNN giving the mask, the category
and the category's landmarks with visibility.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from scipy.cluster.vq import kmeans2
from skimage.color import rgb2lab
from skimage.filters import threshold_otsu
from torch import nn

from models.config import model_config
from models.garments import CATEGORIES, flip_permutation, num_landmarks
from models.pretrained import load_weights, read_meta, save_weights

# The mask is found at this long side; the alpha is upsampled to the photo's full size.
WORK_SIDE = 320
# Colour distance (CIE76 ΔE) below which a pixel always counts as background.
MIN_BACKGROUND_DELTA_E = 10.0
# The second look (`GarmentParser.zoom`): the first pass's garment box plus this share of its
# longer side on each side, parsed again so that the garment fills the parser's input.
ZOOM_MARGIN = 0.15


class GarmentNotFound(ValueError):
    code = "garment_not_found"


def _working_copy(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = WORK_SIDE / max(h, w)
    if scale >= 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))


def _border_pixels(lab: np.ndarray, band: int) -> np.ndarray:
    top, bottom = lab[:band].reshape(-1, 3), lab[-band:].reshape(-1, 3)
    left, right = lab[band:-band, :band].reshape(-1, 3), lab[band:-band, -band:].reshape(-1, 3)
    return np.concatenate([top, bottom, left, right])


def background_distance(rgb: np.ndarray, clusters: int = 6, seed: int = 0) -> np.ndarray:
    """Per-pixel colour distance to the nearest background cluster.

    rgb: (H, W, 3) uint8. Returns (H, W) float32, CIE76 ΔE to the closest of `clusters`
    k-means centres of the border band's Lab colours.
    """
    lab = rgb2lab(rgb).astype(np.float32)
    band = max(2, round(0.03 * min(lab.shape[:2])))
    border = _border_pixels(lab, band)
    k = min(clusters, len(border))
    with warnings.catch_warnings():
        # A plain border gives duplicate or empty clusters; harmless for a nearest-centre test.
        warnings.simplefilter("ignore")
        centres, _ = kmeans2(border.astype(np.float64), k, seed=seed, minit="++")
    centres = centres[np.isfinite(centres).all(axis=1)]
    flat = lab.reshape(-1, 3)
    dist = np.full(flat.shape[0], np.inf, dtype=np.float32)
    for c in centres.astype(np.float32):
        np.minimum(dist, np.linalg.norm(flat - c, axis=1), out=dist)
    return dist.reshape(lab.shape[:2])


def classical_garment_mask(rgb: np.ndarray) -> np.ndarray:
    """Soft garment mask of a photo with a background model from its border.

    rgb: (H, W, 3) uint8 photo. Returns (H, W) float32 in [0, 1] at the photo's size
    (found at a long side of WORK_SIDE and upsampled smoothly, so edges stay soft).
    Raises GarmentNotFound when nothing stands out from the background.
    """
    small = _working_copy(rgb)
    dist = ndimage.gaussian_filter(background_distance(small), 1.0)
    try:
        otsu = float(threshold_otsu(dist))
    except ValueError:  # a constant image
        otsu = np.inf
    fg = dist > max(otsu, MIN_BACKGROUND_DELTA_E)
    fg = ndimage.binary_opening(fg, iterations=1)
    fg = ndimage.binary_closing(fg, iterations=2)
    labels, n = ndimage.label(fg)
    if n == 0:
        raise GarmentNotFound("no garment stands out from the background of this photo")
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    garment = ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))
    if garment.mean() < 0.005:
        raise GarmentNotFound("the only object found is too small to be the garment")
    soft = ndimage.gaussian_filter(garment.astype(np.float32), 0.7)
    h, w = rgb.shape[:2]
    if soft.shape != (h, w):
        soft = np.asarray(Image.fromarray(soft, "F").resize((w, h), Image.Resampling.BILINEAR))
    # Re-sharpen the upsampled ramp to about two photo pixels of edge.
    return np.clip((soft - 0.5) * 2.0 + 0.5, 0.0, 1.0).astype(np.float32)


# The learned parser ------------------------------------------------------------------------
#
# A small encoder–decoder CNN on the whole photo, letterboxed to PARSER_INPUT²: a mask head
# (visible garment pixels), a category head, one heatmap channel per (category, landmark)
# pair (DeepFashion2-style: a channel means one thing) and a visibility logit per channel.
# Trained on the garment world (`flatlay train parser`); weights in models/weights/parser-tiny.

PARSER_WEIGHTS = Path(__file__).parent / "weights" / "parser-tiny"
PARSER_INPUT = 128
HEATMAP_SIZE = 32
MASK_SIZE = 64


def landmark_offsets() -> dict[str, tuple[int, int]]:
    """category → [start, stop) of its channels among all heatmap channels."""
    out, start = {}, 0
    for c in CATEGORIES:
        out[c] = (start, start + num_landmarks(c))
        start += num_landmarks(c)
    return out


def total_landmarks() -> int:
    return sum(num_landmarks(c) for c in CATEGORIES)


def conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """Two 3×3 conv–BN–ReLU layers, the first with `stride` (the parser's and the pattern
    head's building block)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
    )


class ParserNet(nn.Module):
    """(B, 3, 128, 128) normalised photos → mask logits (B, 1, 64, 64), category logits
    (B, C), heatmap logits (B, ΣL, 32, 32), visibility logits (B, ΣL)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.enc1 = conv_block(3, w, 2)  # 64²
        self.enc2 = conv_block(w, 2 * w, 2)  # 32²
        self.enc3 = conv_block(2 * w, 4 * w, 2)  # 16²
        self.enc4 = conv_block(4 * w, 8 * w, 2)  # 8²
        self.dec3 = conv_block(8 * w + 4 * w, 4 * w, 1)  # 16²
        self.dec2 = conv_block(4 * w + 2 * w, 4 * w, 1)  # 32²
        self.dec1 = nn.Sequential(  # 64², only for the mask: one light conv
            nn.Conv2d(4 * w + w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True))
        n_lm = total_landmarks()
        self.mask_head = nn.Conv2d(w, 1, 1)
        self.heatmap_head = nn.Conv2d(4 * w, n_lm, 1)
        self.category_head = nn.Linear(8 * w, len(CATEGORIES))
        self.visibility_head = nn.Linear(8 * w + 4 * w, n_lm)
        self.width = width

    @classmethod
    def from_config(cls, config: str | dict[str, Any]) -> ParserNet:
        """A fresh net from a named architecture (`models/configs/parser-NAME.json`) or its
        dict."""
        cfg = model_config("parser", config) if isinstance(config, str) else config
        return cls(width=int(cfg["width"]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)

        d3 = self.dec3(torch.cat([up(e4), e3], 1))
        d2 = self.dec2(torch.cat([up(d3), e2], 1))
        d1 = self.dec1(torch.cat([up(d2), e1], 1))
        g4 = e4.mean((2, 3))
        return {
            "mask": self.mask_head(d1),
            "category": self.category_head(g4),
            "heatmaps": self.heatmap_head(d2),
            "visibility": self.visibility_head(torch.cat([g4, d2.mean((2, 3))], 1)),
        }


def letterbox(rgb: np.ndarray, size: int = PARSER_INPUT) -> tuple[np.ndarray, float, tuple]:
    """The photo on a `size`² square, longer side fitted, padded with its border's median
    colour. Returns (square uint8, scale, (pad_x, pad_y)) with photo px = (sq px − pad)/scale."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    scale = size / side
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    square, scale, (pad_x, pad_y) = square_view(rgb, -((size - nw) // 2) / scale,
                                                -((size - nh) // 2) / scale, side, size)
    return square, scale, (round(pad_x), round(pad_y))  # whole pixels: the photo starts at 0


def square_view(rgb: np.ndarray, x0: float, y0: float, side: float,
                size: int = PARSER_INPUT, fill: int | None = None
                ) -> tuple[np.ndarray, float, tuple]:
    """The photo's square [x0, x0 + side)² (photo px; it may reach past the photo, filled with
    `fill` or the border's median colour) resampled to `size`² by area averaging; `rgb` may
    also be one channel. Returns (square uint8, scale, (pad_x, pad_y)) with photo px =
    (sq px − pad)/scale, as `letterbox`."""
    h, w = rgb.shape[:2]
    scale = size / side
    ix0, iy0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    ix1, iy1 = min(w, int(np.ceil(x0 + side))), min(h, int(np.ceil(y0 + side)))
    if ix1 <= ix0 or iy1 <= iy0:
        raise ValueError(f"the square at ({x0:.0f}, {y0:.0f}), side {side:.0f} misses the "
                         f"{w}×{h} photo")
    nw, nh = max(1, round((ix1 - ix0) * scale)), max(1, round((iy1 - iy0) * scale))
    small = np.asarray(Image.fromarray(rgb[iy0:iy1, ix0:ix1]).resize(
        (nw, nh), Image.Resampling.BOX))
    if fill is None:
        border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
        colour = tuple(int(v) for v in np.median(border, axis=0).reshape(-1))
    else:
        colour = (fill,) * (3 if rgb.ndim == 3 else 1)
    canvas = Image.new("RGB" if len(colour) == 3 else "L", (size, size),
                       colour if len(colour) == 3 else colour[0])
    at = (round((ix0 - x0) * scale), round((iy0 - y0) * scale))
    canvas.paste(Image.fromarray(small), at)
    return np.asarray(canvas), scale, (at[0] - ix0 * scale, at[1] - iy0 * scale)


def zoom_square(box: tuple[float, float, float, float], margin: float = ZOOM_MARGIN
                ) -> tuple[float, float, float]:
    """(x0, y0, side) of the square centred on a (top, left, bottom, right) garment box, its
    longer side plus `margin` of it on each side: the second look's view (`square_view`)."""
    top, left, bottom, right = box
    side = max(bottom - top, right - left, 1.0) * (1 + 2 * margin)
    return (left + right - side) / 2, (top + bottom - side) / 2, side


def normalise(batch: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 → (N, 3, S, S) float in about [-2, 2]."""
    t = torch.from_numpy(np.array(batch, copy=True)).permute(0, 3, 1, 2).float() / 255.0
    return (t - 0.5) / 0.25


def soft_argmax(heatmaps: torch.Tensor, window: int = 2) -> torch.Tensor:
    """(B, L, H, W) logits → (B, L, 2) (x, y) in the unit square: the softmax-weighted mean
    in a (2·window+1)² window around each peak (robust to a second mode elsewhere)."""
    b, n, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, n, -1)
    peak = flat.argmax(-1)
    py, px = peak // w, peak % w
    ys = torch.arange(h, device=heatmaps.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=heatmaps.device).view(1, 1, 1, w)
    near = ((ys - py[..., None, None]).abs() <= window) & ((xs - px[..., None, None]).abs()
                                                           <= window)
    logits = heatmaps.masked_fill(~near, float("-inf"))
    p = torch.softmax(logits.reshape(b, n, -1), -1).reshape(b, n, h, w)
    x = (p.sum(2) * (torch.arange(w, device=heatmaps.device) + 0.5)).sum(-1) / w
    y = (p.sum(3) * (torch.arange(h, device=heatmaps.device) + 0.5)).sum(-1) / h
    return torch.stack([x, y], -1)


@dataclass
class ParsedGarment:
    """What the parser sees in one photo, in the photo's own coordinates.

    mask: (H, W) float32 in [0, 1], visible garment. category: the most likely category,
    with `category_probs` over CATEGORIES. landmarks: (L, 2) float32 (x, y) in the photo's
    unit square for that category; visibility: (L,) bool; confidence: (L,) float32 in [0, 1].
    """

    mask: np.ndarray
    category: str
    category_probs: dict[str, float]
    landmarks: np.ndarray
    visibility: np.ndarray
    confidence: np.ndarray
    # The network's outputs, to read another category's landmarks (GarmentParser.read_as).
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    # The category head's own probabilities (C,), where the parser has a head: evidence for
    # stage 3's decision whether or not they were mixed into `category_probs`.
    head_probs: np.ndarray | None = None

    def box(self, threshold: float = 0.5) -> tuple[int, int, int, int] | None:
        """(top, left, bottom, right) of the mask, or None when it is empty."""
        ys, xs = np.nonzero(self.mask > threshold)
        if ys.size == 0:
            return None
        return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


class GarmentParser:
    """The trained parser with its pre- and post-processing; `parse(rgb)` per photo."""

    VISIBLE = 0.5
    # The second look's share of the category and whether its mask and landmarks replace the
    # first pass's; chosen on validation photos (`bench/tune_category.py --looks`).
    ZOOM_WEIGHT = 0.5
    ZOOM_DETAIL = False
    # The category head's share of the parse's own category (`head`,
    # models.pattern.CategoryClassifier). 0: the head's probabilities travel on the parse
    # (`ParsedGarment.head_probs`) as evidence of their own, weighed by stage 3's learned
    # decision (models.decision); 0.3 was the best of stage 1 alone for the ninth session's
    # head (`bench/category_head_val.py`).
    HEAD_WEIGHT = 0.0

    def __init__(self, net: ParserNet, meta: dict[str, Any] | None = None,
                 mirror: bool = True, head: Any = None) -> None:
        self.net = net.eval()
        self.meta = meta or {}
        # A third look for the category: anything with `probabilities(rgb, mask)` over
        # CATEGORIES (the pipelines give the shipped category head; None: the parser alone).
        self.head, self.head_weight = head, self.HEAD_WEIGHT
        self.offsets = landmark_offsets()
        # Parse the photo and its mirror image and average: the parse becomes mirror
        # equivariant, and on 600 validation photos `flatten`'s landmark NME fell from
        # 0.0158 to 0.0154 and silhouette IoU rose from 0.819 to 0.822 (docs/flatten.md).
        self.mirror = mirror
        # The second look (`_second_look`), for weights trained on its views (their config
        # says so: `flatlay train parser --zoom-share`).
        self.zoom = bool(self.meta.get("second_look", False))
        self.zoom_weight, self.zoom_detail = self.ZOOM_WEIGHT, self.ZOOM_DETAIL
        perm = np.zeros(sum(num_landmarks(c) for c in CATEGORIES), np.int64)
        for c, (start, stop) in self.offsets.items():
            perm[start:stop] = start + flip_permutation(c)
        # Channel i of the original is channel _mirrored[i] of the mirror image's output.
        self._mirrored = torch.from_numpy(perm)

    @classmethod
    def from_pretrained(cls, folder: Path = PARSER_WEIGHTS, head: Any = None) -> GarmentParser:
        meta = read_meta(folder, "garment parser", "flatlay train parser")
        return cls(load_weights(folder, ParserNet(width=int(meta["model_cfg"]["width"]))), meta,
                   head=head)

    def save_pretrained(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        save_weights(folder, self.net, {
            "architecture": "ParserNet", "model_cfg": {
                "width": self.net.width, "input": PARSER_INPUT, "heatmap": HEATMAP_SIZE,
                "mask": MASK_SIZE, "categories": list(CATEGORIES)}, **(extra or {})})

    @torch.inference_mode()
    def parse(self, rgb: np.ndarray, category: str | None = None,
              with_head: bool = False) -> ParsedGarment:
        """rgb (H, W, 3) uint8 → ParsedGarment. `category` forces the landmark schema read
        out (for example a category the caller already knows). The category head runs where
        it is mixed in (`head_weight`) or `with_head` asks for its probabilities (stage 3's
        decision weighs them); a caller that only wants the parse does not pay for it."""
        h, w = rgb.shape[:2]
        square, scale, pad = letterbox(rgb)
        out = self._forward(normalise(square[None]))
        if self.zoom:
            out, scale, pad = self._second_look(rgb, out, scale, pad)
        probs = torch.softmax(out["category"][0], -1).numpy()
        mask = self._photo_mask(out["mask"][0, 0], scale, pad, (h, w))
        head_probs = None
        if self.head is not None and (with_head or self.head_weight > 0) and (mask > 0.5).any():
            head_probs = self.head.probabilities(rgb, mask)
            if self.head_weight > 0:
                probs = (1 - self.head_weight) * probs + self.head_weight * head_probs
        parsed = ParsedGarment(
            mask=mask,
            category="",
            category_probs={c: round(float(p), 6) for c, p in zip(CATEGORIES, probs,
                                                                   strict=True)},
            landmarks=np.zeros((0, 2), np.float32),
            visibility=np.zeros(0, bool),
            confidence=np.zeros(0, np.float32),
            raw={"heatmaps": out["heatmaps"], "visibility": out["visibility"],
                 "scale": scale, "pad": pad, "shape": (h, w)},
            head_probs=head_probs,
        )
        return self.read_as(parsed, category or CATEGORIES[int(probs.argmax())])

    def _second_look(self, rgb: np.ndarray, out: dict[str, torch.Tensor], scale: float,
                     pad: tuple) -> tuple[dict[str, torch.Tensor], float, tuple]:
        """Parse the square around the first pass's garment box again, where the garment
        fills the input. The category is the mean of both passes' probabilities, weighted
        `zoom_weight` for the second; with `zoom_detail` mask, landmarks and visibility come
        from the second look (finer on the garment). No garment found: the first pass."""
        cells = torch.nonzero(out["mask"][0, 0] > 0)
        if len(cells) == 0:
            return out, scale, pad
        k = PARSER_INPUT / MASK_SIZE  # square px per mask cell
        (top, left), (bottom, right) = cells.min(0).values.tolist(), cells.max(0).values.tolist()
        box = ((top * k - pad[1]) / scale, (left * k - pad[0]) / scale,
               ((bottom + 1) * k - pad[1]) / scale, ((right + 1) * k - pad[0]) / scale)
        square, zoom_scale, zoom_pad = square_view(rgb, *zoom_square(box))
        zoomed = self._forward(normalise(square[None]))
        p = ((1 - self.zoom_weight) * torch.softmax(out["category"], -1)
             + self.zoom_weight * torch.softmax(zoomed["category"], -1))
        if not self.zoom_detail:
            return {**out, "category": torch.log(p)}, scale, pad
        return {**zoomed, "category": torch.log(p)}, zoom_scale, zoom_pad

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network on one letterboxed photo, averaged with its mirror image when
        `mirror` is set (the mirror's outputs flipped back, left and right landmarks
        swapped)."""
        if not self.mirror:
            return self.net(x)
        out = self.net(torch.cat([x, x.flip(-1)]))
        swap = self._mirrored
        # Category: the mean of the two softmaxes, as logits.
        category = torch.log(torch.softmax(out["category"], -1).mean(0, keepdim=True))
        return {
            "category": category,
            "mask": (out["mask"][:1] + out["mask"][1:].flip(-1)) / 2,
            "heatmaps": (out["heatmaps"][:1] + out["heatmaps"][1:, swap].flip(-1)) / 2,
            "visibility": (out["visibility"][:1] + out["visibility"][1:, swap]) / 2,
        }

    def read_as(self, parsed: ParsedGarment, category: str) -> ParsedGarment:
        """The same parse read with `category`'s landmark schema (no second forward pass)."""
        raw = parsed.raw
        start, stop = self.offsets[category]
        xy = soft_argmax(raw["heatmaps"][:, start:stop])[0].numpy() * PARSER_INPUT  # square px
        (pad_x, pad_y), scale, (h, w) = raw["pad"], raw["scale"], raw["shape"]
        landmarks = np.stack([(xy[:, 0] - pad_x) / scale / w, (xy[:, 1] - pad_y) / scale / h], 1)
        conf = torch.sigmoid(raw["visibility"][0, start:stop]).numpy()
        return dataclasses.replace(parsed, category=category,
                                   landmarks=landmarks.astype(np.float32),
                                   visibility=conf > self.VISIBLE,
                                   confidence=conf.astype(np.float32))

    @staticmethod
    def _photo_mask(logits: torch.Tensor, scale: float, pad: tuple[int, int],
                    shape: tuple[int, int]) -> np.ndarray:
        """Mask logits on the letterboxed square → (H, W) soft mask of the photo."""
        prob = torch.sigmoid(logits).numpy().astype(np.float32)
        k = PARSER_INPUT / MASK_SIZE
        h, w = shape
        # The photo's area on the mask grid, then a smooth resize to the photo's size.
        x0, y0 = pad[0] / k, pad[1] / k
        x1, y1 = x0 + w * scale / k, y0 + h * scale / k
        img = Image.fromarray(prob, "F")
        full = img.transform((w, h), Image.Transform.EXTENT, (x0, y0, x1, y1),
                             Image.Resampling.BILINEAR)
        soft = np.asarray(full, np.float32)
        # One mask cell spans k / scale photo pixels; sharpen the upsampled ramp to about
        # 1.5 photo pixels, as soft as a real edge and no halo.
        edge = max(1.0, k / scale / 1.5)
        return np.clip((soft - 0.5) * edge + 0.5, 0.0, 1.0).astype(np.float32)
