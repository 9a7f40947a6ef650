"""The garment heads: which retail pattern (models.attributes.PATTERNS) a delivered garment
wears, and how it closes (CLOSURES, between the choices its category has), read from its
pixels by small CNNs trained on the garment world (`flatlay train pattern|closure`), which
knows every garment's fabric, print and front; and the category head, a third look at the
photo's garment for stage 1's category (`flatlay train category`).

Input of the attribute heads: the garment's RGBA, cropped to its alpha's box, squared on
white and reduced to `input_size`² (`pattern_input`), so stripes and checks keep their size
relative to the garment. Trained on true flat-lays and on wild photos' visible garments (with
blur, as a generated 128² garment delivers them), so it reads any pipeline's output. The
category head reads the photo itself (`category_input`: the parser's second-look square at a
finer resolution, with the parser's mask beside it).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from models.attributes import CLOSURE_CHOICES, CLOSURES, PATTERNS, garment_attributes
from models.config import model_config
from models.garments import CATEGORIES
from models.parser import ZOOM_MARGIN, conv_block, square_view, zoom_square
from models.pretrained import load_weights, read_meta, save_weights

if TYPE_CHECKING:
    from models.pipeline import FlatLayResult

PATTERN_WEIGHTS = Path(__file__).parent / "weights" / "pattern-tiny"
CLOSURE_WEIGHTS = Path(__file__).parent / "weights" / "closure-tiny"
CATEGORY_WEIGHTS = Path(__file__).parent / "weights" / "category-tiny"


def pattern_input(rgb: np.ndarray, alpha: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 and (H, W) alpha (bool or [0, 1] float) → (size, size, 4) uint8: the
    garment's box, squared and centred on white, RGB on white plus its alpha."""
    inside = np.asarray(alpha) > 0.5
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    if len(rows) == 0:
        y0, x0, y1, x1 = 0, 0, inside.shape[0], inside.shape[1]
    else:
        y0, x0, y1, x1 = rows[0], cols[0], rows[-1] + 1, cols[-1] + 1
    crop_rgb = Image.fromarray(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
    a8 = np.asarray(alpha[y0:y1, x0:x1], np.float32)
    crop_a = Image.fromarray((np.clip(a8, 0, 1) * 255 + 0.5).astype(np.uint8))
    # A delivered canvas is 1024² or more: reduce it first (box filter, in C), so the
    # compositing below works on a few hundred pixels a side (the result is the same box
    # average to within rounding).
    factor = max(1, max(crop_rgb.size) // (2 * size))
    if factor > 1:
        crop_rgb, crop_a = crop_rgb.reduce(factor), crop_a.reduce(factor)
    w, h = crop_rgb.size
    side = max(w, h)
    a_f = np.asarray(crop_a, np.float32)[..., None] / 255.0
    on_white = np.asarray(crop_rgb, np.float32) * a_f + 255.0 * (1 - a_f)
    rgba = np.full((side, side, 4), 255, np.uint8)
    rgba[..., 3] = 0
    oy, ox = (side - h) // 2, (side - w) // 2
    rgba[oy:oy + h, ox:ox + w, :3] = (on_white + 0.5).astype(np.uint8)
    rgba[oy:oy + h, ox:ox + w, 3] = np.asarray(crop_a)
    # RGB and alpha apart: PIL resizes RGBA premultiplied, which would blacken the margin.
    rgb_small = Image.fromarray(rgba[..., :3]).resize((size, size), Image.Resampling.BOX)
    a_small = Image.fromarray(rgba[..., 3]).resize((size, size), Image.Resampling.BOX)
    return np.dstack([np.asarray(rgb_small), np.asarray(a_small)])


def category_input(rgb: np.ndarray, mask: np.ndarray, size: int,
                   square: tuple[float, float, float] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 photo and its (H, W) garment mask in [0, 1] → (size, size, 4) uint8:
    the photo's `square` (x0, y0, side; default the second look's around the mask's box,
    `models.parser.zoom_square`) and the mask's, both area-averaged. The photo keeps its
    background: the parser's mask is coarse at the garment's edge, and the head learns to read
    around it."""
    if square is None:
        # The box from the mask's row and column projections: the same box as np.nonzero's
        # extremes at an eighth of its cost on a 1024² mask (stage 1's latency).
        inside = np.asarray(mask) > 0.5
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        if rows.size == 0:
            raise ValueError("no garment in the mask")
        square = zoom_square((rows[0], cols[0], rows[-1] + 1, cols[-1] + 1), ZOOM_MARGIN)
    view = square_view(rgb, *square, size)[0]
    m8 = (np.clip(np.asarray(mask, np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.dstack([view, square_view(m8, *square, size, fill=0)[0]])


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """(N, S, S, 4) uint8 → (N, 4, S, S) float, RGB centred, alpha in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 255.0
    return torch.cat([(t[:, :3] - 0.5) / 0.25, t[:, 3:]], 1)


class PatternNet(nn.Module):
    """(B, 4, S, S) → (B, classes) logits: four stride-2 blocks, then the mean and the max
    over the garment (a print is local, a stripe everywhere; a zip or a placket is a line)."""

    def __init__(self, width: int, input_size: int, classes: int = len(PATTERNS)) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(conv_block(4, w, 2), conv_block(w, 2 * w, 2),
                                      conv_block(2 * w, 4 * w, 2), conv_block(4 * w, 8 * w, 2))
        self.head = nn.Linear(16 * w, classes)
        self.width, self.input_size, self.classes = width, input_size, classes

    @classmethod
    def from_config(cls, config: str | dict[str, Any], family: str = "pattern",
                    classes: int = len(PATTERNS)) -> PatternNet:
        """A fresh net from a named architecture (`models/configs/FAMILY-NAME.json`) or its
        dict."""
        cfg = model_config(family, config) if isinstance(config, str) else config
        return cls(width=int(cfg["width"]), input_size=int(cfg["input_size"]),
                   classes=int(cfg.get("classes", classes)))

    def config(self) -> dict[str, int]:
        return {"width": self.width, "input_size": self.input_size, "classes": self.classes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))


class PatternClassifier:
    """The trained pattern head with its input preparation: `read(rgb, alpha)` per garment.
    Subclasses name another head's labels and weights (ClosureClassifier)."""

    NAME = "pattern"
    LABELS: tuple[str, ...] = PATTERNS
    WEIGHTS = PATTERN_WEIGHTS
    # The metadata key naming the labels the weights were trained for.
    LABELS_KEY = "patterns"

    def __init__(self, net: PatternNet, meta: dict[str, Any] | None = None) -> None:
        self.net = net.eval()
        self.meta = meta or {}

    @staticmethod
    def choices(category: str | None) -> tuple[str, ...] | None:
        """The labels a garment of `category` can have (None: every label)."""
        return None

    @classmethod
    def from_pretrained(cls, folder: Path | None = None) -> PatternClassifier:
        folder = Path(folder or cls.WEIGHTS)
        meta = read_meta(folder, f"{cls.NAME} head", f"flatlay train {cls.NAME}")
        key = cls.LABELS_KEY
        if list(meta.get(key, [])) != list(cls.LABELS):
            raise ValueError(f"{folder} was trained for {key} {meta.get(key)}, "
                             f"not {list(cls.LABELS)}")
        net = PatternNet.from_config(meta["model_cfg"], classes=len(cls.LABELS))
        return cls(load_weights(folder, net), meta)

    def save_pretrained(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        save_weights(folder, self.net, {"architecture": "PatternNet",
                                        "model_cfg": self.net.config(),
                                        self.LABELS_KEY: list(self.LABELS), **(extra or {})})

    @torch.inference_mode()
    def probabilities(self, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """(len(LABELS),) probabilities for one garment."""
        x = to_tensor(pattern_input(rgb, alpha, self.net.input_size)[None])
        return torch.softmax(self.net(x), 1)[0].numpy()

    def read(self, rgb: np.ndarray, alpha: np.ndarray,
             choices: tuple[str, ...] | None = None) -> str:
        """The likeliest label, among `choices` where given."""
        p = self.probabilities(rgb, alpha)
        allowed = [i for i, name in enumerate(self.LABELS) if choices is None or name in choices]
        return self.LABELS[max(allowed, key=lambda i: p[i])]


class ClosureClassifier(PatternClassifier):
    """The closure head: pull-on, zip, button, wrap or drawstring, read between the choices
    the garment's category has (models.attributes.CLOSURE_CHOICES)."""

    NAME = "closure"
    LABELS = CLOSURES
    WEIGHTS = CLOSURE_WEIGHTS
    LABELS_KEY = "closures"

    @staticmethod
    def choices(category: str | None) -> tuple[str, ...] | None:
        return CLOSURE_CHOICES.get(category or "", ())


class CategoryClassifier(PatternClassifier):
    """The category head: the photo's garment seen closer than the parser sees it (its
    second-look square at `input_size`², beside the parser's mask), for the knit, ribbing,
    hoods and hems that tell a sweater from a long-sleeved top or a tank top from a t-shirt.
    `models.parser.GarmentParser` mixes its probabilities into the parse's category."""

    NAME = "category"
    LABELS = CATEGORIES
    WEIGHTS = CATEGORY_WEIGHTS
    LABELS_KEY = "categories"

    @torch.inference_mode()
    def probabilities(self, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """(len(CATEGORIES),) probabilities for the photo `rgb` and its garment mask `alpha`;
        the mean over the view and its mirror image (categories are mirror-symmetric)."""
        x = to_tensor(category_input(rgb, alpha, self.net.input_size)[None])
        return torch.softmax(self.net(torch.cat([x, x.flip(-1)])), 1).mean(0).numpy()


@functools.cache
def shipped_category_head() -> CategoryClassifier | None:
    """The shipped category head, loaded once per process (None where none ships)."""
    if not (CATEGORY_WEIGHTS / "config.json").is_file():
        return None
    return CategoryClassifier.from_pretrained()


@functools.cache
def shipped_classifier() -> PatternClassifier:
    """The shipped pattern head, loaded once per process."""
    return PatternClassifier.from_pretrained()


@functools.cache
def shipped_closure_head() -> ClosureClassifier:
    """The shipped closure head, loaded once per process."""
    return ClosureClassifier.from_pretrained()


def read_pattern(rgb: np.ndarray, alpha: np.ndarray) -> str | None:
    """The garment's pattern by the shipped pattern head; None without a garment."""
    if float(np.max(alpha)) <= 0.5:
        return None
    return shipped_classifier().read(rgb, alpha)


def read_closure(category: str | None, rgb: np.ndarray, alpha: np.ndarray) -> str | None:
    """The garment's closure: its category's own where it has one, else the closure head's
    reading among the category's choices; None without a category (or one the world does
    not know) or a garment."""
    choices = ClosureClassifier.choices(category)
    if not choices:
        return None
    if len(choices) == 1:
        return choices[0]
    if float(np.max(alpha)) <= 0.5:
        return None
    return shipped_closure_head().read(rgb, alpha, choices)


def delivered_attributes(result: FlatLayResult) -> dict[str, Any]:
    """A pipeline result's catalog attributes, pattern and closure included (read from the
    photo's own texture where the pipeline re-draws the garment, as a generation washes out
    prints, zips and buttons; else from the delivered pixels): what the worker stores and
    the attributes benchmark scores (one definition for both)."""
    rgb, alpha = result.texture or (result.image[..., :3], result.alpha)
    out = garment_attributes(result.category, result.landmarks, result.image, result.alpha,
                             category_confidence=result.category_confidence,
                             frame=result.frame, pattern=read_pattern(rgb, alpha),
                             photo_landmarks=result.photo_landmarks,
                             closure=read_closure(result.category, rgb, alpha))
    if result.hint is not None:
        out["hint"] = result.hint
    return out
