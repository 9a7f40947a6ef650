"""Garment templates: per-category shape parameters and part polygons (the shape drawing).

Every template builds a `GarmentShape` in the canonical frame: the unit square of the flat-lay
canvas, (x, y) with x to the right and y down, garment front view, symmetric about x = 0.5,
vertically centred, at a scale that is fixed per category (a wider t-shirt looks wider).

Each shape's landmarks follow its category's schema (structure_bank.schema: the categories,
landmark names in contour order, then the interior points flagged `on_contour=False`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from structure_bank.schema import CATEGORIES, SLEEVE_SIDE, landmark_names

FAMILIES: tuple[str, ...] = ("standard", "heldout")

# One parameter per category whose held-out range never occurs in the standard family; models
# trained on the standard family are tested for generalisation on the held-out one.
HELDOUT: dict[str, tuple[str, tuple[float, float], tuple[float, float], str]] = {
    "tshirt": ("body_length", (0.50, 0.62), (0.36, 0.44), "cropped body"),
    "long_sleeve_top": ("sleeve_length", (0.29, 0.35), (0.19, 0.24), "three-quarter sleeves"),
    "tank_top": ("strap_width", (0.035, 0.09), (0.008, 0.018), "spaghetti straps"),
    "shirt": ("fit", (0.88, 1.08), (1.17, 1.24), "oversized boxy fit"),
    "hoodie": ("body_length", (0.50, 0.60), (0.36, 0.43), "cropped body"),
    "sweater": ("cuff_width", (0.055, 0.08), (0.105, 0.125), "bell sleeves"),
    "jacket": ("body_length", (0.46, 0.80), (0.86, 0.93), "long coat"),
    "dress": ("hem_flare", (0.0, 0.15), (0.22, 0.27), "full circle skirt"),
    "skirt": ("length", (0.24, 0.56), (0.64, 0.70), "maxi length"),
    "trousers": ("hem_width", (0.14, 0.19), (0.23, 0.27), "wide flared legs"),
    "jeans": ("hem_width", (0.11, 0.15), (0.075, 0.09), "skinny legs"),
    "shorts": ("inseam", (0.05, 0.16), (0.012, 0.03), "hot-pants inseam"),
}

# Scale from body units to the canvas, fixed per category (so catalog images are comparable).
CATEGORY_SCALE: dict[str, float] = {
    "tshirt": 1.0,
    "long_sleeve_top": 0.96,
    "tank_top": 1.05,
    "shirt": 0.92,
    "hoodie": 0.9,
    "sweater": 0.94,
    "jacket": 0.84,
    "dress": 0.8,
    "skirt": 1.05,
    "trousers": 0.98,
    "jeans": 0.98,
    "shorts": 1.15,
}

@dataclass
class Part:
    """One fabric piece drawn as a layer: torso, a sleeve, a hood.

    `polygon` is (P, 2) float64 in the canonical frame. `z` orders layers (higher on top).
    `pivot` is the joint a sleeve bends around in the wild renderer, or None for rigid parts.
    """

    name: str
    polygon: np.ndarray
    z: int
    pivot: np.ndarray | None = None


@dataclass
class Detail:
    """A construction detail drawn on a part: seam, band, pocket, button, zip, cord, ...

    `points` is (K, 2) float64 in the canonical frame (a polyline, polygon or centre);
    `width` is in canvas units (line width, or radius for round things).
    """

    kind: str
    part: str
    points: np.ndarray
    width: float = 0.0


@dataclass
class GarmentShape:
    """The vector garment: landmarks (N, 2) float64 canonical, parts, details, attributes."""

    category: str
    family: str
    landmarks: np.ndarray
    landmark_part: list[str]
    parts: list[Part]
    details: list[Detail] = field(default_factory=list)
    attributes: dict = field(default_factory=dict)
    print_box: tuple[float, float, float, float] | None = None


class _Params:
    """Draws named shape parameters from `rng`, records them, honours the held-out family."""

    def __init__(self, rng: np.random.Generator, category: str, family: str):
        self.rng, self.category, self.family, self.values = rng, category, family, {}

    def u(self, name: str, lo: float, hi: float) -> float:
        held = HELDOUT[self.category]
        if name == held[0]:
            lo, hi = held[2] if self.family == "heldout" else held[1]
        value = float(self.rng.uniform(lo, hi))
        self.values[name] = round(value, 5)
        return value

    def pick(self, name: str, options: list[str], p: list[float] | None = None) -> str:
        value = str(self.rng.choice(options, p=p))
        self.values[name] = value
        return value

    def flag(self, name: str, p: float) -> bool:
        value = bool(self.rng.random() < p)
        self.values[name] = value
        return value


# ---- geometry helpers (points are (dx, y): dx is the offset from the centre line) ----


def _bez(p0, c, p1, n: int = 10) -> np.ndarray:
    """Quadratic Bezier samples from p0 (excluded) to p1 (included), (n, 2)."""
    t = np.linspace(0.0, 1.0, n + 1)[1:, None]
    p0, c, p1 = (np.asarray(v, dtype=np.float64) for v in (p0, c, p1))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * c + t**2 * p1


def _bez_at(p0, c, p1, t: float) -> np.ndarray:
    p0, c, p1 = (np.asarray(v, dtype=np.float64) for v in (p0, c, p1))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * c + t**2 * p1


def _mirror(pts) -> np.ndarray:
    pts = np.array(pts, dtype=np.float64).reshape(-1, 2)
    pts[:, 0] *= -1
    return pts


def _path(*pieces) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in pieces])


def _symmetric(left_half: np.ndarray) -> np.ndarray:
    """Close a polygon from its left half (top centre to bottom centre, both on dx = 0)."""
    right = _mirror(left_half[::-1])
    return _path(left_half, right[1:-1])


class _Builder:
    """Collects landmarks by name, parts and details, then places them on the canvas."""

    def __init__(self, category: str):
        self.category = category
        self.points: dict[str, np.ndarray] = {}
        self.owner: dict[str, str] = {}
        self.parts: list[Part] = []
        self.details: list[Detail] = []
        self.print_box: tuple[float, float, float, float] | None = None

    def lm(self, name: str, p, part: str = "torso", mirror: bool = True) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if mirror and name.endswith("_l"):
            self.points[name], self.owner[name] = p, part
            right = name[:-2] + "_r"
            self.points[right] = _mirror(p)[0]
            self.owner[right] = part.replace("_l", "_r")
        else:
            self.points[name], self.owner[name] = p, part
        return p

    def part(self, name: str, polygon: np.ndarray, z: int, pivot=None) -> None:
        self.parts.append(Part(name, np.asarray(polygon, dtype=np.float64), z,
                               None if pivot is None else np.asarray(pivot, dtype=np.float64)))

    def sleeves(self, polygon_l: np.ndarray, pivot_l, z: int = 2) -> None:
        self.part("sleeve_l", polygon_l, z, pivot_l)
        self.part("sleeve_r", _mirror(polygon_l), z, _mirror(pivot_l)[0])

    def detail(self, kind: str, part: str, pts, width: float = 0.0, mirror: bool = False):
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        self.details.append(Detail(kind, part, pts, width))
        if mirror:
            self.details.append(Detail(kind, part.replace("_l", "_r"), _mirror(pts), width))

    def finish(self, params: _Params) -> GarmentShape:
        names = landmark_names(self.category)
        missing = [n for n in names if n not in self.points]
        assert not missing, f"{self.category}: template misses landmarks {missing}"
        s = CATEGORY_SCALE[self.category]
        allpts = np.concatenate([p.polygon for p in self.parts])
        y_mid = 0.5 * (allpts[:, 1].min() + allpts[:, 1].max())

        def place(pts: np.ndarray) -> np.ndarray:
            out = np.empty_like(pts)
            out[..., 0] = 0.5 + s * pts[..., 0]
            out[..., 1] = 0.5 + s * (pts[..., 1] - y_mid)
            return out

        for p in self.parts:
            p.polygon = place(p.polygon)
            if p.pivot is not None:
                p.pivot = place(p.pivot)
        for d in self.details:
            d.points, d.width = place(d.points), d.width * s
        box = None
        if self.print_box is not None:
            (x0, y0), (x1, y1) = place(np.asarray(self.print_box).reshape(2, 2))
            box = (float(x0), float(y0), float(x1), float(y1))
        landmarks = place(np.stack([self.points[n] for n in names]))
        return GarmentShape(
            category=self.category,
            family=params.family,
            landmarks=landmarks,
            landmark_part=[self.owner[n] for n in names],
            parts=sorted(self.parts, key=lambda p: p.z),
            details=self.details,
            attributes=dict(params.values),
            print_box=box,
        )


# ---- tops ----------------------------------------------------------------------------------

_TOP_RANGES = {
    # category: sleeve kind, body_length, sleeve angle (deg), sleeve length, cuff width
    "tshirt": ("short", (0.50, 0.62), (22, 36), (0.10, 0.16), (0.085, 0.11)),
    "long_sleeve_top": ("long", (0.52, 0.64), (50, 66), (0.29, 0.35), (0.06, 0.075)),
    "shirt": ("either", (0.58, 0.70), (50, 64), (0.30, 0.36), (0.065, 0.08)),
    "hoodie": ("long", (0.50, 0.60), (50, 64), (0.30, 0.35), (0.06, 0.075)),
    "sweater": ("long", (0.48, 0.60), (50, 66), (0.29, 0.35), (0.055, 0.08)),
    "jacket": ("long", (0.46, 0.80), (48, 62), (0.32, 0.38), (0.07, 0.085)),
}


def _front_neckline(b: _Builder, depth: float, style: str):
    """Interior front neckline from neck_l to neck_r; returns its left half (top to centre)."""
    nl = b.points["neck_l"]
    if style == "v":
        ctrl = (0.5 * nl[0], 0.5 * depth)
    elif style == "scoop":
        ctrl = (nl[0] * 1.05, depth * 0.95)
    else:
        ctrl = (nl[0] * 0.95, depth * 0.9)
    half = _path([nl], _bez(nl, ctrl, (0.0, depth), 8))
    b.lm("neckline_l", _bez_at(nl, ctrl, (0.0, depth), 0.5))
    b.lm("neck_front", (0.0, depth))
    return half


def _sleeve_geometry(shoulder, armpit, angle_deg, length, cuff, side_x_at, side_ctrl):
    """Right-hand sleeve corners (cuff_top, cuff_bottom), raising the sleeve until it clears
    the torso side and opens at least 45 degrees at the armpit (so the armpit stays a crisp,
    visible corner of the outline)."""
    shoulder, armpit = np.asarray(shoulder), np.asarray(armpit)
    below = np.asarray(side_ctrl) - armpit  # the torso side leaves the armpit towards its ctrl
    below /= np.linalg.norm(below)
    theta = np.deg2rad(angle_deg)
    for _ in range(40):
        u = np.array([np.cos(theta), np.sin(theta)])
        n = np.array([-np.sin(theta), np.cos(theta)])
        ct = shoulder + length * u
        cb = ct + cuff * n
        under = (cb - armpit) / np.linalg.norm(cb - armpit)
        opening = np.rad2deg(np.arccos(np.clip(under @ below, -1, 1)))
        if cb[0] > side_x_at(cb[1]) + 0.02 and opening >= 45:
            break
        theta -= np.deg2rad(2.0)
    return ct, cb, float(np.rad2deg(theta))


def _build_top(rng: np.random.Generator, category: str, family: str) -> GarmentShape:
    prm = _Params(rng, category, family)
    b = _Builder(category)
    sleeve_kind, len_rng, ang_rng, slen_rng, cuff_rng = _TOP_RANGES[category]
    if category == "jacket":
        prm.pick("style", ["zip", "button", "coat"], [0.4, 0.3, 0.3])
    fit = prm.u("fit", 0.9, 1.12) if category != "shirt" else prm.u("fit", 0.88, 1.08)
    if category == "jacket":
        fit *= 1.08  # outerwear is cut larger than what goes under it
    chest = 0.165 * fit
    shoulder_w = chest * prm.u("shoulder_ratio", 1.02, 1.12)
    waist_w = chest * prm.u("waist_ratio", 0.9, 1.0)
    hem_w = chest * prm.u("hem_ratio", 0.93, 1.06)
    neck = prm.u("neck_width", 0.05, 0.07)
    drop = prm.u("shoulder_drop", 0.025, 0.045)
    armhole = prm.u("armhole_depth", 0.13, 0.16)
    length = prm.u("body_length", *len_rng)
    if category == "jacket" and prm.values["style"] == "coat":
        length = max(length, 0.68)
        prm.values["body_length"] = round(length, 5)
    if sleeve_kind == "either":
        sleeve_kind = prm.pick("sleeve", ["long", "short"], [0.6, 0.4])
    else:
        prm.values["sleeve"] = sleeve_kind
    if sleeve_kind == "short" and category == "shirt":
        ang_rng, slen_rng, cuff_rng = (24, 36), (0.11, 0.16), (0.085, 0.105)
    angle = prm.u("sleeve_angle", *ang_rng)
    slen = prm.u("sleeve_length", *slen_rng)
    cuff = prm.u("cuff_width", *cuff_rng)
    hem_curve = prm.u("hem_curve", 0.02, 0.045) if category == "shirt" else 0.0

    if category == "sweater":
        neck_style = prm.pick("neckline", ["crew", "v", "turtleneck"], [0.5, 0.3, 0.2])
    elif category == "long_sleeve_top":
        neck_style = prm.pick("neckline", ["crew", "v", "scoop", "henley"], [0.4, 0.2, 0.2, 0.2])
    elif category == "tshirt":
        neck_style = prm.pick("neckline", ["crew", "v", "scoop"], [0.55, 0.25, 0.2])
    elif category == "jacket":
        neck_style = prm.pick("collar", ["shirt_collar", "stand", "lapel", "hood"],
                              [0.3, 0.3, 0.25, 0.15])
    else:
        neck_style = "collar" if category == "shirt" else "crew"

    back_dip = 0.012
    top = -0.045 if neck_style == "turtleneck" else 0.0
    if neck_style == "turtleneck":
        neck = max(neck, 0.062)
    nl = b.lm("neck_l", (-neck, 0.0))
    sl = b.lm("shoulder_l", (-shoulder_w, drop))
    al = b.lm("armpit_l", (-chest, drop + armhole))
    hem_y = length
    wl = b.lm("waist_l", (-waist_w, 0.5 * (al[1] + hem_y)))
    hl = b.lm("hem_l", (-hem_w, hem_y - hem_curve))
    hc = b.lm("hem_centre", (0.0, hem_y))

    def side_x(y):  # right-hand torso side, for keeping sleeves off the body
        return float(np.interp(y, [al[1], wl[1], hl[1]], [chest, waist_w, hem_w]))

    side_ctrl = (0.5 * (chest + waist_w), 0.5 * (al[1] + wl[1]))
    ct_r, cb_r, angle = _sleeve_geometry(_mirror(sl)[0], _mirror(al)[0], angle, slen, cuff,
                                         side_x, side_ctrl)
    prm.values["sleeve_angle"] = round(angle, 3)
    ctl, cbl = _mirror(ct_r)[0], _mirror(cb_r)[0]
    b.lm("cuff_top_l", ctl, "sleeve_l")
    b.lm("cuff_bottom_l", cbl, "sleeve_l")
    b.lm("sleeve_top_l", 0.5 * (sl + ctl), "sleeve_l")
    b.lm("sleeve_under_l", 0.5 * (cbl + al), "sleeve_l")

    # Torso outline, left half from the top centre down to the hem centre.
    if neck_style == "turtleneck":
        back = _path([(0.0, top)], [(-neck * 0.95, top)], [nl])
        b.lm("neck_back", (0.0, top))
    elif category == "hoodie":
        back = None
    else:
        back = _path([(0.0, back_dip)], _bez((0.0, back_dip), (-0.6 * neck, back_dip), nl, 6))
        b.lm("collar_back" if category == "shirt" else "neck_back", (0.0, back_dip))
    armhole_ctrl = (al[0] + 0.012, 0.5 * (sl[1] + al[1]))
    body = _path(
        [sl],
        _bez(sl, armhole_ctrl, al, 6),
        _bez(al, (-0.5 * (chest + waist_w), 0.5 * (al[1] + wl[1])), wl, 6),
        _bez(wl, (-0.5 * (waist_w + hem_w), 0.5 * (wl[1] + hl[1])), hl, 6),
        _bez(hl, (-0.55 * hem_w, hem_y + 0.1 * hem_curve), hc, 8),
    )

    # Front neckline (interior) and the region inside it.
    if category == "shirt":
        depth = prm.u("collar_depth", 0.04, 0.055)
        b.lm("collar_centre", (0.0, depth))
    elif category == "hoodie":
        depth = prm.u("neck_depth", 0.05, 0.075)
    elif category == "jacket":
        depth = prm.u("neck_depth", 0.06, 0.1) if neck_style == "lapel" else 0.035
    else:
        depth = {"crew": (0.03, 0.045), "v": (0.09, 0.13), "scoop": (0.06, 0.09),
                 "henley": (0.03, 0.045), "turtleneck": (0.012, 0.02)}[neck_style]
        depth = prm.u("neck_depth", *depth)
    if category == "shirt":
        front = _path([nl], _bez(nl, (-0.9 * neck, 0.8 * depth), (0.0, depth), 8))
    else:
        front = _front_neckline(b, depth, "v" if neck_style in ("v", "lapel") else
                                "scoop" if neck_style == "scoop" else "crew")

    if category == "hoodie":
        # Torso's top edge is the front neckline; the hood lies behind it.
        left_half = _path(front[::-1], body)
        hood_w = prm.u("hood_width", 0.085, 0.11)
        hood_h = prm.u("hood_height", 0.16, 0.2)
        hl_pt = b.lm("hood_l", (-hood_w, -0.5 * hood_h), "hood")
        b.lm("hood_top", (0.0, -hood_h), "hood")
        hood_half = _path(
            [(0.0, 0.04)], [(-0.6 * neck, 0.04)], [nl],
            _bez(nl, (-hood_w * 0.95, -0.3 * hood_h), hl_pt, 8),
            _bez(hl_pt, (-hood_w * 0.95, -hood_h), (0.0, -hood_h), 8),
        )[::-1]
        b.part("hood", _symmetric(hood_half), 0)
        opening = _path([(0.0, depth)],
                        _bez((0.0, depth), (-0.75 * hood_w, 0.0), (-0.45 * hood_w, -0.62 * hood_h),
                             8),
                        _bez((-0.45 * hood_w, -0.62 * hood_h), (-0.2 * hood_w, -0.8 * hood_h),
                             (0.0, -0.78 * hood_h), 6))[::-1]
        b.detail("lining", "hood", _symmetric(opening))
        b.detail("band", "hood", _path(opening[::-1], _mirror(opening)[1:]), 0.012)
    else:
        left_half = _path(back, body)
        inner = _path(front, _mirror(front[::-1])[1:])
        inner_region = _path(_bez(nl, (0.0, back_dip * 1.5), _mirror(nl)[0], 10), inner[::-1])
        if category == "jacket":
            pass  # the jacket's collar styles cover the neck opening themselves
        elif category == "shirt":
            b.detail("lining", "torso", inner_region)
        else:
            b.detail("lining", "torso", inner_region)
            if neck_style != "turtleneck":
                b.detail("label", "torso", [(0.0, back_dip + 0.016)], 0.016)
            b.detail("band", "torso", inner, 0.011 if category != "sweater" else 0.018)
    b.part("torso", _symmetric(left_half), 1)

    # Sleeve polygon (left): joint cap reaches into the torso so a bent sleeve leaves no gap.
    cap = (al[0] + 0.045, 0.5 * (sl[1] + al[1]))
    sleeve_l = _path([sl], [ctl], [cbl], [al], _bez(al, cap, sl, 8)[:-1])
    b.sleeves(sleeve_l, sl)
    seam = _bez(sl, armhole_ctrl, al, 8)
    b.detail("seam", "sleeve_l", _path([sl], seam), 0.0, mirror=True)
    b.detail("seam", "torso", [nl, sl], mirror=True)

    # Cuffs, hems, bands.
    axis = (ctl - sl) / np.linalg.norm(ctl - sl)
    ribbed = category in ("sweater", "hoodie") or (category == "jacket"
                                                   and prm.values["style"] == "zip")
    cuff_band = 0.035 if ribbed else 0.0
    if category == "shirt" and sleeve_kind == "long":
        cuff_band = 0.04
    if cuff_band:
        band = _path([ctl - cuff_band * axis], [ctl], [cbl], [cbl - cuff_band * axis])
        b.detail("rib" if ribbed else "cuff", "sleeve_l", band, mirror=True)
    else:
        b.detail("seam", "sleeve_l", [ctl - 0.018 * axis, cbl - 0.018 * axis], mirror=True)
    if ribbed or (category == "jacket" and prm.values["style"] != "coat"):
        hb = 0.045 if category != "jacket" else 0.035
        band_half = _path(_bez((0.0, hem_y - hb), (-0.55 * hem_w, hem_y - hb),
                               (-hem_w * 0.99, hem_y - hb - hem_curve), 6)[::-1],
                          [(-hem_w * 0.99, hem_y - hb)], [hl], _bez(hl, (-0.55 * hem_w, hem_y), hc,
                                                                    6))
        band = _path(band_half, _mirror(band_half[::-1]))
        b.detail("rib" if ribbed else "cuff", "torso", band)
    else:
        hem_seam = _bez((-hem_w + 0.004, hem_y - hem_curve - 0.02),
                        (-0.55 * hem_w, hem_y + 0.1 * hem_curve - 0.02), (0.0, hem_y - 0.02), 8)
        b.detail("seam", "torso", _path(hem_seam, _mirror(hem_seam[::-1])[1:]))

    # Category construction details.
    chest_y = depth + 0.06
    b.print_box = ((-0.62 * chest), chest_y, 0.62 * chest, min(chest_y + 0.26, hem_y - 0.1))
    if category == "shirt":
        _shirt_details(b, prm, nl, depth, hem_y, chest)
    elif category == "hoodie":
        _hoodie_details(b, prm, depth, hem_y, chest)
    elif category == "jacket":
        _jacket_details(b, prm, nl, depth, hem_y, chest, neck_style)
    elif neck_style == "henley":
        b.detail("placket", "torso", [(-0.012, depth - 0.004), (0.012, depth + 0.12)])
        for k in range(3):
            b.detail("button", "torso", [(0.0, depth + 0.025 + 0.035 * k)], 0.0055)
    elif neck_style == "turtleneck":
        b.detail("rib", "torso", _path([(-neck * 0.95, top)], [(neck * 0.95, top)],
                                       [(neck, 0.012)], [(-neck, 0.012)]))
    if category == "sweater" and prm.flag("cable_knit", 0.35):
        for x in (-0.55 * chest, 0.0, 0.55 * chest):
            b.detail("cable", "torso", [(x, depth + 0.05), (x, hem_y - 0.06)], 0.028)
    if category == "tshirt" and prm.flag("chest_pocket", 0.15):
        _patch_pocket(b, (0.55 * chest, depth + 0.075), 0.085, 0.095)
    return b.finish(prm)


def _patch_pocket(b: _Builder, centre, w: float, h: float, part: str = "torso", flap=False):
    cx, cy = centre
    poly = [(cx - w / 2, cy), (cx + w / 2, cy), (cx + w / 2, cy + h * 0.85), (cx, cy + h),
            (cx - w / 2, cy + h * 0.85)]
    b.detail("pocket", part, poly)
    if flap:
        b.detail("flap", part, [(cx - w / 2 - 0.004, cy - 0.012), (cx + w / 2 + 0.004, cy - 0.012),
                                (cx + w / 2 + 0.004, cy + 0.018), (cx - w / 2 - 0.004, cy + 0.018)])


def _shirt_details(b, prm, nl, depth, hem_y, chest):
    tip_len = prm.u("collar_point", 0.055, 0.085)
    spread = prm.u("collar_spread", 0.025, 0.05)
    tip = b.lm("collar_tip_l", (-spread, depth + tip_len))
    outer = (nl[0] - 0.018, nl[1] + 0.03)
    leaf = _path([nl], _bez(nl, (nl[0] - 0.02, nl[1] + 0.01), outer, 4), [tip], [(0.0, depth)],
                 _bez((0.0, depth), (nl[0] * 0.6, depth * 0.2), nl, 6)[:-1])
    b.detail("collar", "torso", leaf, mirror=True)
    b.detail("placket", "torso", [(-0.014, depth), (0.014, hem_y - 0.01)])
    gap = prm.u("button_gap", 0.065, 0.085)
    y = depth + 0.01
    while y < hem_y - 0.03:
        b.detail("button", "torso", [(0.0, y)], 0.006)
        y += gap
    if prm.flag("chest_pocket", 0.5):
        _patch_pocket(b, (0.55 * chest, depth + 0.1), 0.08, 0.09, flap=prm.flag("pocket_flap",
                                                                                 0.4))


def _hoodie_details(b, prm, depth, hem_y, chest):
    if prm.flag("zip_front", 0.3):
        b.detail("zip", "torso", [(0.0, depth), (0.0, hem_y)], 0.012)
        for sx in (-1, 1):
            b.detail("pocket_slit", "torso", [(sx * 0.5 * chest, hem_y - 0.2),
                                              (sx * 0.75 * chest, hem_y - 0.08)])
    else:
        top, bot = hem_y - 0.23, hem_y - 0.05
        poly = [(-0.45 * chest, top), (0.45 * chest, top), (0.7 * chest, top + 0.09),
                (0.72 * chest, bot), (-0.72 * chest, bot), (-0.7 * chest, top + 0.09)]
        b.detail("pocket", "torso", poly)
        b.print_box = (-0.6 * chest, depth + 0.06, 0.6 * chest, min(depth + 0.25, top - 0.02))
    if prm.flag("drawstrings", 0.8):
        for sx in (-1, 1):
            x0 = sx * 0.028
            b.detail("cord", "torso", [(x0, depth - 0.01), (x0 + sx * 0.004, depth + 0.06),
                                       (x0 + sx * 0.002, depth + 0.11)], 0.006)


def _jacket_details(b, prm, nl, depth, hem_y, chest, collar):
    style = prm.values["style"]
    is_open = prm.flag("open_front", 0.4)
    gap = prm.u("opening_gap", 0.03, 0.09) if is_open else 0.0
    if is_open:
        region = [(-0.02, depth), (0.02, depth), (gap, hem_y), (-gap, hem_y)]
        b.detail("lining", "torso", region)
        b.detail("seam", "torso", [(-0.02, depth), (-gap, hem_y)])
        b.detail("seam", "torso", [(0.02, depth), (gap, hem_y)])
    elif style == "zip":
        b.detail("zip", "torso", [(0.0, depth), (0.0, hem_y)], 0.012)
    else:
        b.detail("placket", "torso", [(-0.016, depth), (0.016, hem_y)])
        rows = (-0.045, 0.045) if style == "coat" and prm.flag("double_breasted", 0.5) else (0.0,)
        for x in rows:
            y = depth + 0.03
            while y < hem_y - 0.06:
                b.detail("button", "torso", [(x, y)], 0.009)
                y += 0.1
    if collar == "lapel":
        lap = [nl, (nl[0] - 0.025, nl[1] + 0.04), (-0.075, depth + 0.02), (-0.012, depth + 0.05),
               (-0.01, depth), (nl[0] * 0.5, 0.02)]
        b.detail("collar", "torso", lap, mirror=True)
    elif collar == "shirt_collar":
        tip = (nl[0] - 0.005, 0.085)
        leaf = [nl, (nl[0] - 0.03, 0.035), tip, (-0.012, depth + 0.005), (nl[0] * 0.4, 0.012)]
        b.detail("collar", "torso", leaf, mirror=True)
        b.detail("lining", "torso", _path(_bez(nl, (0.0, 0.018), _mirror(nl)[0], 8),
                                          [(0.012, depth)], [(-0.012, depth)]))
    elif collar == "stand":
        band = _path(_bez(nl, (0.0, 0.02), _mirror(nl)[0], 8)[::-1],
                     [(-nl[0] + 0.004, 0.035)], _bez((-nl[0] + 0.004, 0.035), (0.0, 0.055),
                                                     (nl[0] - 0.004, 0.035), 8))
        b.detail("rib" if style == "zip" else "collar", "torso", _path([nl], band))
    else:  # hood folded down behind the collar
        b.detail("collar", "torso", [nl, (nl[0] - 0.03, 0.03), (nl[0] - 0.01, 0.07), (-0.01, depth),
                                     (nl[0] * 0.3, 0.015)], mirror=True)
    pocket_y = hem_y - prm.u("pocket_height", 0.12, 0.2)
    if style == "coat" or prm.flag("flap_pockets", 0.5):
        for sx in (-1, 1):
            cx = sx * 0.55 * chest
            b.detail("flap", "torso", [(cx - 0.045, pocket_y), (cx + 0.045, pocket_y),
                                       (cx + 0.045, pocket_y + 0.028),
                                       (cx - 0.045, pocket_y + 0.028)])
    else:
        for sx in (-1, 1):
            b.detail("pocket_slit", "torso", [(sx * 0.4 * chest, pocket_y),
                                              (sx * 0.62 * chest, pocket_y + 0.1)])
    if style == "coat" and prm.flag("belt", 0.35):
        wy = b.points["waist_l"][1]
        b.detail("belt", "torso", [(-chest * 1.02, wy), (chest * 1.02, wy)], 0.03)


# ---- tank top and dress ---------------------------------------------------------------------


def _build_sleeveless_or_dress(rng: np.random.Generator, category: str,
                               family: str) -> GarmentShape:
    prm = _Params(rng, category, family)
    b = _Builder(category)
    is_dress = category == "dress"
    chest = 0.165 * prm.u("fit", 0.88, 1.08) * (0.95 if is_dress else 1.0)
    neck = prm.u("neck_width", 0.045, 0.075)
    drop = prm.u("shoulder_drop", 0.015, 0.035)
    armhole = prm.u("armhole_depth", 0.13, 0.17)
    sleeve = prm.pick("sleeve", ["none", "short", "long"], [0.5, 0.3, 0.2]) if is_dress else "none"
    if sleeve == "none":
        strap = prm.u("strap_width", 0.035, 0.09) if not is_dress else prm.u("strap_width", 0.03,
                                                                              0.08)
        shoulder_w = neck + strap
    else:
        shoulder_w = chest * prm.u("shoulder_ratio", 1.0, 1.08)
    neck_style = prm.pick("neckline", ["crew", "scoop", "v"], [0.35, 0.4, 0.25])
    depth = {"crew": (0.03, 0.05), "scoop": (0.07, 0.11), "v": (0.1, 0.15)}[neck_style]
    depth = prm.u("neck_depth", *depth)

    nl = b.lm("neck_l", (-neck, 0.0))
    sl = b.lm("shoulder_l", (-shoulder_w, drop))
    al = b.lm("armpit_l", (-chest, drop + armhole))
    back_dip = 0.01
    b.lm("neck_back", (0.0, back_dip))
    if is_dress:
        waist_w = chest * prm.u("waist_ratio", 0.78, 0.92)
        waist_y = al[1] + prm.u("bodice_length", 0.1, 0.15)
        hip_w = waist_w + prm.u("hip_ease", 0.02, 0.05)
        skirt_len = prm.u("skirt_length", 0.3, 0.62)
        flare = prm.u("hem_flare", 0.0, 0.15)
        hem_y = waist_y + skirt_len
        hip_y = waist_y + 0.35 * skirt_len
        hem_w = hip_w + flare + 0.02
        wl = b.lm("waist_l", (-waist_w, waist_y))
        hipl = b.lm("hip_l", (-(hip_w + 0.35 * flare), hip_y))
        hl = b.lm("hem_l", (-hem_w, hem_y - 0.25 * flare))
        hc = b.lm("hem_centre", (0.0, hem_y + 0.1 * flare))
        lower = _path(
            _bez(al, (-0.5 * (chest + waist_w), 0.5 * (al[1] + wl[1])), wl, 6),
            _bez(wl, (-hip_w, 0.5 * (wl[1] + hipl[1])), hipl, 6),
            _bez(hipl, (0.5 * (hipl[0] + hl[0]), 0.5 * (hipl[1] + hl[1])), hl, 6),
            _bez(hl, (-0.55 * hem_w, hem_y + 0.12 * flare), hc, 10),
        )
    else:
        waist_w = chest * prm.u("waist_ratio", 0.9, 1.0)
        hem_w = chest * prm.u("hem_ratio", 0.95, 1.06)
        hem_y = prm.u("body_length", 0.5, 0.62)
        wl = b.lm("waist_l", (-waist_w, 0.5 * (al[1] + hem_y)))
        hl = b.lm("hem_l", (-hem_w, hem_y))
        hc = b.lm("hem_centre", (0.0, hem_y))
        lower = _path(
            _bez(al, (-0.5 * (chest + waist_w), 0.5 * (al[1] + wl[1])), wl, 6),
            _bez(wl, (-0.5 * (waist_w + hem_w), 0.5 * (wl[1] + hl[1])), hl, 6),
            _bez(hl, (-0.5 * hem_w, hem_y), hc, 8),
        )
    if sleeve == "none":
        ctrl = (sl[0] - 0.01, al[1] - 0.01)
        arm = _bez(sl, ctrl, al, 12)
        if is_dress:
            for name, t in zip(SLEEVE_SIDE[2:6], (0.2, 0.4, 0.6, 0.8), strict=True):
                b.lm(f"{name}_l", _bez_at(sl, ctrl, al, t))
        else:
            b.lm("armhole_l", _bez_at(sl, ctrl, al, 0.5))
    else:
        arm = _bez(sl, (al[0] + 0.012, 0.5 * (sl[1] + al[1])), al, 6)
    back = _path([(0.0, back_dip)], _bez((0.0, back_dip), (-0.6 * neck, back_dip), nl, 6))
    b.part("torso", _symmetric(_path(back, [sl], arm, lower)), 1)

    front = _front_neckline(b, depth, neck_style)
    inner = _path(front, _mirror(front[::-1])[1:])
    b.detail("lining", "torso", _path(_bez(nl, (0.0, back_dip * 1.5), _mirror(nl)[0], 10),
                                      inner[::-1]))
    b.detail("band", "torso", inner, 0.009)
    if sleeve == "none":
        b.detail("band", "torso", _path([sl], arm), 0.008, mirror=True)
    else:
        angle = prm.u("sleeve_angle", 24, 36) if sleeve == "short" else prm.u("sleeve_angle", 52,
                                                                                 64)
        slen = prm.u("sleeve_length", 0.08, 0.13) if sleeve == "short" else prm.u(
            "sleeve_length", 0.28, 0.33)
        cuff = prm.u("cuff_width", 0.075, 0.1) if sleeve == "short" else prm.u("cuff_width", 0.055,
                                                                                 0.07)

        def side_x(y):
            return float(np.interp(y, [al[1], wl[1], hl[1]], [chest, waist_w, hem_w]))

        side_ctrl = (0.5 * (chest + waist_w), 0.5 * (al[1] + wl[1]))
        ct_r, cb_r, angle = _sleeve_geometry(_mirror(sl)[0], _mirror(al)[0], angle, slen, cuff,
                                             side_x, side_ctrl)
        ctl, cbl = _mirror(ct_r)[0], _mirror(cb_r)[0]
        b.lm("cuff_top_l", ctl, "sleeve_l")
        b.lm("cuff_bottom_l", cbl, "sleeve_l")
        b.lm("sleeve_top_l", 0.5 * (sl + ctl), "sleeve_l")
        b.lm("sleeve_under_l", 0.5 * (cbl + al), "sleeve_l")
        cap = (al[0] + 0.045, 0.5 * (sl[1] + al[1]))
        b.sleeves(_path([sl], [ctl], [cbl], [al], _bez(al, cap, sl, 8)[:-1]), sl)
        b.detail("seam", "sleeve_l", _path([sl], arm), mirror=True)
        axis = (ctl - sl) / np.linalg.norm(ctl - sl)
        b.detail("seam", "sleeve_l", [ctl - 0.016 * axis, cbl - 0.016 * axis], mirror=True)
    if is_dress:
        if prm.flag("waist_seam", 0.7):
            b.detail("seam", "torso", _path([wl], [_mirror(wl)[0]]))
        if prm.flag("belt", 0.2):
            b.detail("belt", "torso", [(wl[0] - 0.004, wl[1]), (-wl[0] + 0.004, wl[1])], 0.022)
        if prm.flag("buttons", 0.2):
            y = depth + 0.02
            while y < wl[1] - 0.02:
                b.detail("button", "torso", [(0.0, y)], 0.0055)
                y += 0.05
        b.print_box = (-0.6 * chest, depth + 0.05, 0.6 * chest, wl[1] - 0.02)
    else:
        b.detail("seam", "torso", _path(_bez((-hem_w + 0.004, hem_y - 0.018),
                                             (-0.5 * hem_w, hem_y - 0.018), (0.0, hem_y - 0.018),
                                             6),
                                        _bez((0.0, hem_y - 0.018), (0.5 * hem_w, hem_y - 0.018),
                                             (hem_w - 0.004, hem_y - 0.018), 6)))
        b.print_box = (-0.62 * chest, depth + 0.05, 0.62 * chest, min(depth + 0.3, hem_y - 0.08))
    return b.finish(prm)


# ---- bottoms --------------------------------------------------------------------------------


def _waistband(b: _Builder, waist_w: float, band: float, belt_loops: bool, button: bool):
    b.detail("cuff", "torso", [(-waist_w, 0.0), (waist_w, 0.0), (waist_w * 1.005, band),
                               (-waist_w * 1.005, band)])
    if belt_loops:
        for x in (-0.85, -0.4, 0.4, 0.85):
            b.detail("loop", "torso", [(x * waist_w, -0.004), (x * waist_w, band + 0.006)], 0.012)
    if button:
        b.detail("button", "torso", [(0.0, band * 0.5)], 0.008)


def _build_skirt(rng: np.random.Generator, category: str, family: str) -> GarmentShape:
    prm = _Params(rng, category, family)
    b = _Builder(category)
    waist_w = prm.u("waist_width", 0.14, 0.18)
    band = prm.u("waistband", 0.025, 0.045)
    hip_w = waist_w + prm.u("hip_ease", 0.015, 0.035)
    length = prm.u("length", 0.24, 0.56)
    flare = prm.u("hem_flare", 0.0, 0.14)
    hip_y = min(0.13, 0.4 * length)
    hem_w = hip_w + flare
    sag = 0.35 * flare
    wl = b.lm("waist_l", (-waist_w, 0.0))
    b.lm("waist_centre", (0.0, 0.0))
    hipl = b.lm("hip_l", (-hip_w, hip_y))
    hl = b.lm("hem_l", (-hem_w, length - sag * 0.4))
    hc = b.lm("hem_centre", (0.0, length + sag * 0.3))
    ctrl = np.array([-0.55 * hem_w, length + sag * 0.1])
    b.lm("hem_mid_l", _bez_at(hl, ctrl, hc, 0.5))
    left = _path([(0.0, 0.0)], [wl], _bez(wl, (-hip_w, 0.5 * hip_y), hipl, 6),
                 _bez(hipl, (0.5 * (hipl[0] + hl[0]), 0.5 * (hipl[1] + hl[1])), hl, 6),
                 _bez(hl, ctrl, hc, 12))
    b.part("torso", _symmetric(left), 1)
    style = prm.pick("style", ["plain", "pleated", "buttoned", "wrap"], [0.4, 0.25, 0.2, 0.15])
    _waistband(b, waist_w, band, prm.flag("belt_loops", 0.3), style == "buttoned")
    if style == "pleated":
        for k in range(-3, 4):
            f = k / 3.5
            b.detail("line", "torso", [(f * waist_w, band + 0.01),
                                       (f * (hem_w - 0.01), length + sag * 0.3 * (1 - f * f))])
    elif style == "buttoned":
        b.detail("placket", "torso", [(-0.012, band), (0.012, length + sag * 0.3)])
        y = band + 0.04
        while y < length - 0.02:
            b.detail("button", "torso", [(0.0, y)], 0.006)
            y += 0.07
    elif style == "wrap":
        b.detail("seam", "torso", [(0.35 * waist_w, band), (-0.5 * hem_w, length)])
    b.detail("seam", "torso", _path(_bez((-hem_w + 0.006, length - sag * 0.4 - 0.018), ctrl - [
        0, 0.018], (0.0, length + sag * 0.3 - 0.018), 8), _mirror(_bez(
            (hem_w - 0.006, length - sag * 0.4 - 0.018), ctrl * [-1, 1] - [0, 0.018],
            (0.0, length + sag * 0.3 - 0.018), 8))[::-1]))
    b.print_box = (-0.6 * hip_w, band + 0.03, 0.6 * hip_w, min(band + 0.2, length - 0.05))
    return b.finish(prm)


def _build_legwear(rng: np.random.Generator, category: str, family: str) -> GarmentShape:
    prm = _Params(rng, category, family)
    b = _Builder(category)
    shorts = category == "shorts"
    waist_w = prm.u("waist_width", 0.15, 0.185)
    band = prm.u("waistband", 0.025, 0.04)
    hip_w = waist_w + prm.u("hip_ease", 0.01, 0.03)
    rise = prm.u("rise", 0.2, 0.26)
    hip_y = 0.55 * rise
    if shorts:
        inseam = prm.u("inseam", 0.05, 0.16)
        hem_width = prm.u("hem_width", 0.15, 0.2)
        splay = prm.u("splay", 0.02, 0.06)
        splay = max(splay, hem_width - hip_w + 0.05)  # legs apart at the hem
        prm.values["splay"] = round(splay, 5)
        leg = rise + inseam
    else:
        leg = prm.u("length", 0.8, 0.88)
        hem_width = prm.u("hem_width", 0.14, 0.19) if category == "trousers" else prm.u(
            "hem_width", 0.11, 0.15)
        splay = prm.u("splay", 0.0, 0.03)
        # Legs must not overlap at the hem: wide legs spread further apart.
        splay = max(splay, hem_width - hip_w + 0.03)
        prm.values["splay"] = round(splay, 5)
    outer_hem = (-(hip_w + splay), leg - (0.02 if shorts else 0.0))
    inner_hem = (outer_hem[0] + hem_width, leg)
    b.lm("waist_centre", (0.0, 0.0))
    wl = b.lm("waist_l", (-waist_w, 0.0))
    hipl = b.lm("hip_l", (-hip_w, hip_y))
    crotch = b.lm("crotch", (0.0, rise))
    ho = b.lm("hem_outer_l", outer_hem)
    hi = b.lm("hem_inner_l", inner_hem)
    if shorts:
        left = _path([(0.0, 0.0)], [wl], _bez(wl, (-hip_w, 0.4 * hip_y), hipl, 5), [ho], [hi],
                     _bez(hi, (0.5 * hi[0], rise + 0.02), crotch, 6))
    else:
        knee_y = rise + 0.45 * (leg - rise)
        knee_w = 0.5 * (hip_w + hem_width * 0.9) if category != "jeans" else 0.5 * (
            hip_w * 0.85 + hem_width)
        knee_out = -(hip_w + splay * 0.45 + 0.004)
        ko = b.lm("knee_outer_l", (knee_out, knee_y))
        ki = b.lm("knee_inner_l", (min(knee_out + knee_w, -0.025), knee_y))
        left = _path([(0.0, 0.0)], [wl], _bez(wl, (-hip_w, 0.4 * hip_y), hipl, 5),
                     _bez(hipl, (-(hip_w + 0.15 * splay), 0.5 * (hip_y + knee_y)), ko, 6), [ho],
                     [hi], _bez(hi, (ki[0] + 0.004, 0.5 * (ki[1] + leg)), ki, 5),
                     _bez(ki, (-0.02, rise + 0.04), crotch, 6))
    b.part("torso", _symmetric(left), 1)
    denim = category == "jeans"
    _waistband(b, waist_w, band, belt_loops=denim or prm.flag("belt_loops", 0.5), button=True)
    b.detail("fly", "torso", [(0.0, band), (0.035, band), (0.035, rise * 0.65), (0.0, rise * 0.8)])
    if denim:
        b.detail("pocket_curve", "torso", [(-waist_w * 0.95, band + 0.005),
                                           (-waist_w * 0.55, band + 0.07),
                                           (-hip_w * 0.99, hip_y + 0.045)], mirror=True)
        b.detail("pocket", "torso", [(-waist_w * 0.85, band + 0.012),
                                     (-waist_w * 0.6, band + 0.012),
                                     (-waist_w * 0.6, band + 0.045),
                                     (-waist_w * 0.85, band + 0.045)], mirror=False)
        for x, y in ((-waist_w * 0.55, band + 0.07), (-hip_w * 0.99, hip_y + 0.045),
                     (waist_w * 0.55, band + 0.07), (hip_w * 0.99, hip_y + 0.045)):
            b.detail("rivet", "torso", [(x, y)], 0.0045)
    else:
        b.detail("pocket_slit", "torso", [(-waist_w * 0.7, band + 0.004),
                                          (-hip_w * 0.98, hip_y + 0.05)], mirror=True)
        if not shorts and prm.flag("creases", 0.6):
            mid = 0.5 * (np.array(ko) + np.array(ki))
            b.detail("line", "torso", [(-hip_w * 0.5, band + 0.02), mid,
                                       (0.5 * (ho[0] + hi[0]), leg - 0.01)], mirror=True)
    b.detail("seam", "torso", [(ho[0] + 0.002, ho[1] - 0.02), (hi[0] - 0.002, hi[1] - 0.02)],
             mirror=True)
    if shorts and prm.flag("drawstring", 0.3):
        b.detail("cord", "torso", [(-0.01, band * 0.6), (-0.02, band + 0.06)], 0.005)
        b.detail("cord", "torso", [(0.01, band * 0.6), (0.022, band + 0.055)], 0.005)
    b.print_box = (-hip_w * 0.9, hip_y + 0.02, -hip_w * 0.35, hip_y + 0.12)
    return b.finish(prm)


_BUILDERS = {
    "tank_top": _build_sleeveless_or_dress,
    "dress": _build_sleeveless_or_dress,
    "skirt": _build_skirt,
    "trousers": _build_legwear,
    "jeans": _build_legwear,
    "shorts": _build_legwear,
}


def sample_shape(category: str, rng: np.random.Generator, family: str = "standard") -> GarmentShape:
    """Draw one garment of `category` from `family` ("standard" or "heldout")."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    return _BUILDERS.get(category, _build_top)(rng, category, family)
