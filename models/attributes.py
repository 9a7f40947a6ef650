"""Catalog attributes of a delivered flat-lay: category, sleeve length, length, neckline and
dominant colours, read from the structure the pipeline fused and the pixels it delivered
(the neckline from the photo's own parsed landmarks where the pipeline has them).

Torch-free and cheap (a few ms a job): the worker runs it after the pipeline, and the
attributes benchmark (models.eval.attributes) runs the same functions on the garment
world's true landmarks and true flat-lay to make the truth, so a disagreement is the
pipeline's, never a second definition's.

Field names follow Google Merchant Center's product data where it has one (`color`'s values
are names; `product_type`/`google_product_category` are the category; `sleeve_length`,
`length`, `neckline` have no GMC attribute and follow the common retail feed names).

Lengths are measured in body units: the canonical frame divided by the category's fixed
scale (models.garments.CATEGORY_SCALE; the frame is drawn at one scale per category, so a
length there is a length on the body). Landmarks in another frame (cutout's canvas) are
brought to body units by the garment's own width (armpits, or waistband for bottoms), which
is about 0.33 body units on every garment of the world.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from structure_bank.schema import landmark_names

SLEEVE_LENGTHS = ("none", "cap", "short", "elbow", "three-quarter", "long")
LENGTHS = ("mini", "knee", "midi", "maxi", "shorts", "cropped", "full")
NECKLINES = ("crew", "scoop", "v", "turtleneck", "collar", "hood")
# Below this category confidence a job suggests a person's review (the default of
# FLATLAY_REVIEW_CONFIDENCE). Chosen on validation (bench/results/review-val.md, flatten,
# n = 300): it flags 24% of assets, wrong 51% of the time against 8% for the rest, and
# catches 66% of the wrong categories (the F1 of flag-as-detector is within 0.003 of its
# best, at 0.9, which flags a third).
REVIEW_CONFIDENCE = 0.8
# Retail pattern names (Google Merchant Center's `pattern` is free text; these are the values
# feeds commonly use), read from the garment's pixels by models.pattern.
PATTERNS = ("solid", "striped", "checked", "printed", "graphic", "text")
# The garment world's fabrics and prints under those names: heather, knit, denim and a
# gradient are one colour's textures (solid); dots, florals and camo are all-over prints.
FABRIC_PATTERN = {"solid": "solid", "heather": "solid", "knit": "solid", "denim": "solid",
                  "gradient": "solid", "stripes": "striped", "checks": "checked",
                  "plaid": "checked", "dots": "printed", "floral": "printed", "camo": "printed"}
PRINT_PATTERN = {"text": "text", "number": "text", "logo": "graphic", "badge": "graphic"}
# Retail closure types (the feeds' `closure_type` values: pull-on, zipper, button, wrap,
# drawstring), and which of them each category of the garment world can have: one is the
# category's own (a shirt buttons, a t-shirt pulls on); between several the closure head
# (models.pattern.ClosureClassifier) reads the garment's pixels.
CLOSURES = ("pull-on", "zip", "button", "wrap", "drawstring")
CLOSURE_CHOICES: dict[str, tuple[str, ...]] = {
    "tshirt": ("pull-on",), "long_sleeve_top": ("pull-on",), "tank_top": ("pull-on",),
    "sweater": ("pull-on",), "shirt": ("button",), "trousers": ("button",),
    "jeans": ("button",), "hoodie": ("pull-on", "zip"), "jacket": ("zip", "button"),
    "dress": ("pull-on", "button"), "skirt": ("pull-on", "button", "wrap"),
    "shorts": ("button", "drawstring"),
}

SLEEVED = ("tshirt", "long_sleeve_top", "shirt", "hoodie", "sweater", "jacket", "dress")
# Necklines the landmarks tell apart (depth and shape of the front neckline); a shirt has a
# collar and a hoodie a hood by construction; a jacket's collar styles share landmarks.
NECKLINE_BY_SHAPE = ("tshirt", "long_sleeve_top", "sweater", "tank_top", "dress")
NECKLINE_BY_CATEGORY = {"shirt": "collar", "hoodie": "hood"}

# Arm length in body units, shoulder point to wrist: the world's long sleeves (0.29–0.35)
# end there. Sleeve classes are shares of it (retail: cap barely covers the shoulder,
# short to mid upper arm, elbow, three-quarter to mid forearm, long to the wrist).
ARM = 0.34
SLEEVE_BOUNDS = ((0.15, "cap"), (0.48, "short"), (0.55, "elbow"), (0.80, "three-quarter"))
# A sleeve whose cuff ends less than this (body units) outside the shoulder point is the
# armhole itself: sleeveless (a dress without sleeves keeps its sleeve landmarks on the
# armhole curve).
SLEEVELESS_REACH = 0.02
# Waist to hem, body units: knee ≈ 0.50 and ankle ≈ 0.84 below the waist (the world's legs).
SKIRT_BOUNDS = ((0.40, "mini"), (0.55, "knee"), (0.64, "midi"))  # beyond: maxi
LEG_BOUNDS = ((0.55, "shorts"), (0.75, "cropped"))  # beyond: full
# Neckline: front depth below the neck points (body units) and how far the midpoint bows off
# the straight neck → centre line, as a share of that line (0 for a V).
CREW_DEPTH = 0.055
V_BOW = 0.08
# A turtleneck's back rises 0.045 above the neck points, every other back sits 0.01 below
# them; fused backs rise less (0.003–0.016 on 4 validation turtlenecks), so the bound is low.
TURTLENECK_RISE = 0.01
BODY_WIDTH = 0.33

# Colour names: a fixed list of 38 retail colour names (the names catalog feeds use), each
# with a fabric swatch of ours. Not CSS/X11's hex: CSS red (#ff0000) is a screen primary, and
# a red garment, (200, 20, 28) say, is nearer CSS's "brown" (ΔE2000 7.2) than its "red"
# (12.2), and nearer still CSS's "firebrick", which no catalog calls a colour.
COLOR_NAMES: dict[str, str] = {
    "black": "#1c1c1c", "charcoal": "#3b3f45", "grey": "#808285", "light grey": "#c4c4c6",
    "white": "#f5f5f3", "ivory": "#eee8d5", "cream": "#f3e9c6", "beige": "#d8c3a0",
    "khaki": "#bfae82", "tan": "#c8a27a", "camel": "#b8874f", "brown": "#6b4430",
    "chocolate": "#4a2c20", "burgundy": "#6d1a2d", "maroon": "#7a1f1f", "red": "#c0202e",
    "pink": "#eeadc0", "fuchsia": "#d0368a", "coral": "#f07c64", "orange": "#ec7a2a",
    "rust": "#a94f28", "mustard": "#d6a82c", "yellow": "#f5d64a", "olive": "#6b6a3a",
    "green": "#2e7d3c", "forest green": "#234d32", "sage": "#9caa8a", "mint": "#a9dcc4",
    "teal": "#16717a", "turquoise": "#3cbfbf", "light blue": "#a8c8e8",
    "sky blue": "#7fb2e0", "blue": "#2f5ab0", "navy": "#1f2a4d", "denim": "#4a6896",
    "purple": "#5e3a80", "lavender": "#b8a6d6", "lilac": "#c8a2c8",
}
MAX_COLORS = 3
# Clusters nearer than this (CIE76 in Lab) are one colour (shading, not a second colour);
# smaller shares than MIN_SHARE are trim, labels, noise.
MERGE_DELTA = 12.0
MIN_SHARE = 0.05
SAMPLE_PIXELS = 4096
KMEANS_ITERS = 8


def _hex_rgb(value: str) -> tuple[int, int, int]:
    return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 sRGB → (N, 3) float64 CIELAB (D65)."""
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(rgb, dtype=np.uint8).reshape(1, -1, 3)).reshape(-1, 3)


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    from skimage.color import lab2rgb

    rgb = lab2rgb(np.asarray(lab, dtype=np.float64).reshape(1, -1, 3)).reshape(-1, 3)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


_VOCAB_NAMES = tuple(COLOR_NAMES)
_VOCAB_LAB: list[np.ndarray] = []


def _vocab_lab() -> np.ndarray:
    if not _VOCAB_LAB:
        _VOCAB_LAB.append(_lab(np.array([_hex_rgb(h) for h in COLOR_NAMES.values()])))
    return _VOCAB_LAB[0]


def delta_e2000(lab_a: np.ndarray, lab_b: np.ndarray) -> np.ndarray:
    """CIEDE2000 between Lab colours (broadcasting (..., 3) arrays)."""
    from skimage.color import deltaE_ciede2000

    return deltaE_ciede2000(np.asarray(lab_a, np.float64), np.asarray(lab_b, np.float64))


def color_name(lab: np.ndarray) -> str:
    """The vocabulary name nearest to one Lab colour by CIEDE2000."""
    vocab = _vocab_lab()
    d = delta_e2000(np.broadcast_to(np.asarray(lab, np.float64), vocab.shape), vocab)
    return _VOCAB_NAMES[int(np.argmin(d))]


@dataclass(frozen=True)
class Color:
    name: str
    hex: str
    share: float
    lab: tuple[float, float, float]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "hex": self.hex, "share": round(self.share, 4)}


def _kmeans(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic k-means: farthest-point seeds from the mean, a few Lloyd steps.
    Returns (centres (k', 3), labels (N,))."""
    centres = [x.mean(0)]
    for _ in range(k - 1):
        d = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        if d.max() < MERGE_DELTA**2:  # nothing far from what we have: fewer colours
            break
        centres.append(x[int(np.argmax(d))])
    c = np.array(centres)
    for _ in range(KMEANS_ITERS):
        labels = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        c = np.array([x[labels == j].mean(0) if (labels == j).any() else c[j]
                      for j in range(len(c))])
    labels = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    return c, labels


def dominant_colors(rgb: np.ndarray, alpha: np.ndarray, max_colors: int = MAX_COLORS
                    ) -> list[Color]:
    """Up to `max_colors` dominant colours of the garment pixels (alpha > 0.9, so no edge
    blends with the background), clustered in CIELAB, largest share first; share is of
    all garment pixels (shares under MIN_SHARE are dropped, so they may sum below 1).

    rgb: (H, W, 3 or 4) uint8; alpha: (H, W) float in [0, 1] or bool.
    """
    a = np.asarray(alpha)
    a = a.astype(np.float32) if a.dtype == bool else a
    h, w = a.shape
    # A stride first (a 1024² canvas has a million pixels; a few thousand decide colours).
    step = max(1, int(np.sqrt(h * w / (SAMPLE_PIXELS * 4))))
    sub = np.asarray(rgb)[::step, ::step, :3]
    inside = a[::step, ::step] > 0.9
    pixels = sub[inside]
    if len(pixels) == 0:
        return []
    if len(pixels) > SAMPLE_PIXELS:
        pixels = pixels[np.linspace(0, len(pixels) - 1, SAMPLE_PIXELS).astype(np.int64)]
    lab = _lab(pixels)
    centres, labels = _kmeans(lab, max(1, max_colors + 1))  # one spare: merges eat it
    # Merge near clusters (largest first keeps its centre, weighted by counts).
    counts = np.bincount(labels, minlength=len(centres)).astype(np.float64)
    order = list(np.argsort(-counts))
    groups: list[tuple[np.ndarray, float]] = []
    for j in order:
        if counts[j] == 0:
            continue
        for i, (c, n) in enumerate(groups):
            if np.linalg.norm(c - centres[j]) < MERGE_DELTA:
                groups[i] = ((c * n + centres[j] * counts[j]) / (n + counts[j]), n + counts[j])
                break
        else:
            groups.append((centres[j], counts[j]))
    groups.sort(key=lambda g: -g[1])
    total = float(len(labels))
    out = []
    for c, n in groups[:max_colors]:
        share = n / total
        if share < MIN_SHARE:
            continue
        r, g, b = (int(v) for v in _lab_to_rgb(c[None])[0])
        out.append(Color(color_name(c), f"#{r:02x}{g:02x}{b:02x}", float(share),
                         (float(c[0]), float(c[1]), float(c[2]))))
    return out


# ---- structure ------------------------------------------------------------------------------


def _points(category: str, landmarks: np.ndarray) -> dict[str, np.ndarray]:
    names = landmark_names(category)
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if len(lm) != len(names):
        raise ValueError(f"{category} has {len(names)} landmarks, got {len(lm)}")
    return dict(zip(names, lm, strict=True))


def body_scale(category: str, landmarks: np.ndarray, frame: str = "canonical") -> float:
    """Frame units per body unit: the category's canonical scale, or (another frame) the
    garment's width over BODY_WIDTH."""
    if frame == "canonical":
        from models.garments.categories import CATEGORY_SCALE

        return CATEGORY_SCALE[category]
    p = _points(category, landmarks)
    pair = ("armpit_l", "armpit_r") if "armpit_l" in p else ("waist_l", "waist_r")
    return float(np.linalg.norm(p[pair[0]] - p[pair[1]])) / BODY_WIDTH


def _finite(*points: np.ndarray) -> bool:
    return all(np.isfinite(q).all() for q in points)


def sleeve_length(category: str, landmarks: np.ndarray, frame: str = "canonical"
                  ) -> str | None:
    """One of SLEEVE_LENGTHS for a top or dress (None for bottoms or unreadable landmarks):
    the shoulder → cuff_top distance, both sides averaged, as a share of ARM."""
    if category == "tank_top":
        return "none"
    if category not in SLEEVED:
        return None
    p = _points(category, landmarks)
    if not _finite(*p.values()):
        return None
    scale = body_scale(category, landmarks, frame)
    centre = 0.5 * (p["shoulder_l"][0] + p["shoulder_r"][0])
    reach, length = [], []
    for side in ("l", "r"):
        shoulder, cuff = p[f"shoulder_{side}"], p[f"cuff_top_{side}"]
        # How far the cuff lies outside the shoulder point, away from the centre line.
        reach.append(abs(cuff[0] - centre) - abs(shoulder[0] - centre))
        length.append(float(np.linalg.norm(cuff - shoulder)))
    if np.mean(reach) / scale < SLEEVELESS_REACH:
        return "none"
    share = np.mean(length) / scale / ARM
    return next((name for bound, name in SLEEVE_BOUNDS if share < bound), "long")


def garment_length(category: str, landmarks: np.ndarray, frame: str = "canonical"
                   ) -> str | None:
    """One of LENGTHS for bottoms and dresses (None otherwise): waist to hem in body units;
    skirts and dresses mini / knee / midi / maxi, legwear shorts / cropped / full."""
    if category not in ("dress", "skirt", "trousers", "jeans", "shorts"):
        return None
    p = _points(category, landmarks)
    if not _finite(*p.values()):
        return None
    scale = body_scale(category, landmarks, frame)
    waist = 0.5 * (p["waist_l"][1] + p["waist_r"][1])
    if category in ("dress", "skirt"):
        drop = (p["hem_centre"][1] - waist) / scale
        return next((name for bound, name in SKIRT_BOUNDS if drop < bound), "maxi")
    hem = np.mean([p[f"hem_{e}_{s}"][1] for e in ("outer", "inner") for s in ("l", "r")])
    drop = (hem - waist) / scale
    return next((name for bound, name in LEG_BOUNDS if drop < bound), "full")


def neckline(category: str, landmarks: np.ndarray, frame: str = "canonical") -> str | None:
    """One of NECKLINES where the structure tells (None for jackets and bottoms): a raised
    back is a turtleneck; a front whose midpoint lies on the straight neck → centre line is a
    V; else crew or scoop by depth."""
    if category in NECKLINE_BY_CATEGORY:
        return NECKLINE_BY_CATEGORY[category]
    if category not in NECKLINE_BY_SHAPE:
        return None
    p = _points(category, landmarks)
    if not _finite(*p.values()):
        return None
    scale = body_scale(category, landmarks, frame)
    neck_y = 0.5 * (p["neck_l"][1] + p["neck_r"][1])
    if (neck_y - p["neck_back"][1]) / scale > TURTLENECK_RISE:
        return "turtleneck"
    front = p["neck_front"]
    bows = []
    for side in ("l", "r"):
        a, mid = p[f"neck_{side}"], p[f"neckline_{side}"]
        chord = front - a
        length = float(np.linalg.norm(chord))
        if length == 0:
            return None
        off = mid - a
        bows.append(abs(chord[0] * off[1] - chord[1] * off[0]) / length / length)
    if np.mean(bows) < V_BOW:
        return "v"
    return "crew" if (front[1] - neck_y) / scale < CREW_DEPTH else "scoop"


def world_closure(category: str, shape: dict[str, Any]) -> str:
    """The true closure of a garment-world garment from its shape parameters
    (`sample.attributes["shape"]`): how the world's builders draw it (a zip or a buttoned
    placket down the front, a wrap seam, a drawstring at the waist; a henley's neck buttons
    leave it a pull-on, an open jacket keeps its style)."""
    if category == "hoodie":
        return "zip" if shape.get("zip_front") else "pull-on"
    if category == "jacket":
        return "zip" if shape.get("style") == "zip" else "button"
    if category == "dress":
        return "button" if shape.get("buttons") else "pull-on"
    if category == "skirt":
        return {"buttoned": "button", "wrap": "wrap"}.get(shape.get("style", ""), "pull-on")
    if category == "shorts":
        return "drawstring" if shape.get("drawstring") else "button"
    return CLOSURE_CHOICES[category][0]


def world_pattern(attributes: dict[str, Any]) -> str:
    """The true pattern of a garment-world sample (its `attributes`): a front print names it
    (text or graphic), unless it is a chest-logo sized one, which leaves the fabric's."""
    printed = attributes.get("print")
    if printed and not printed.get("small"):
        return PRINT_PATTERN[printed["kind"]]
    return FABRIC_PATTERN[attributes["fabric"]["kind"]]


def garment_attributes(category: str | None, landmarks: np.ndarray | None,
                       rgb: np.ndarray, alpha: np.ndarray, *,
                       category_confidence: float | None = None,
                       frame: str = "canonical", pattern: str | None = None,
                       photo_landmarks: np.ndarray | None = None,
                       closure: str | None = None) -> dict[str, Any]:
    """The attributes of one delivered flat-lay as JSON: category {value, confidence},
    sleeve_length, length, neckline (each only where it applies and the structure is
    readable), pattern and closure (as models.pattern read them, where given), colors
    [{name, hex, share}] from the delivered pixels. With `photo_landmarks` (the photo's own,
    parsed as `category`) the neckline is read from them: the fused structure is a mean of
    many necklines (right on 0.776 of 281 validation photos whose category was right, against
    0.669 from the fused landmarks)."""
    out: dict[str, Any] = {}
    if category is not None:
        conf = None if category_confidence is None else round(float(category_confidence), 4)
        out["category"] = {"value": category, "confidence": conf}
        if landmarks is not None:
            neck = (landmarks, frame) if photo_landmarks is None else (photo_landmarks, "photo")
            for name, fn, (lms, frm) in (("sleeve_length", sleeve_length, (landmarks, frame)),
                                         ("length", garment_length, (landmarks, frame)),
                                         ("neckline", neckline, neck)):
                try:
                    value = fn(category, lms, frm)
                except (ValueError, KeyError):  # a schema that does not fit: say nothing
                    value = None
                if value is not None:
                    out[name] = value
    if pattern is not None:
        out["pattern"] = pattern
    if closure is not None:
        out["closure"] = closure
    out["colors"] = [c.to_json() for c in dominant_colors(rgb, alpha)]
    return out

