"""The in-the-wild photo of a garment, with a difficulty knob in [0, 1].

The flat-lay part layers are warped into a photo: sleeves bend about the shoulder (or fold
across the body, or tuck behind it), a thin-plate-spline drape and fold ridges deform the
cloth, a homography adds rotation, scale and perspective. Fold ridges also shade the cloth;
layers cast soft shadows. The garment lies on a real surface photo, hangs on a hanger or is
worn by a body-like support in front of a real photo; hands, the hanger and photo objects
occlude it. White balance, exposure, blur, noise and JPEG finish the picture.

Warps are backward maps sampled on a coarse node grid and applied with Pillow's MESH
transform (bilinear inside each cell). Landmarks are pushed forward through the very same
piecewise-bilinear map (Newton on the node grid), so they sit on the rendered pixels.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from structure_bank.schema import landmark_names

from .backgrounds import PHOTOS, crop_background, load_photo, sample_background
from .categories import GarmentShape
from .render_flat import FlatLayers, soft_blur
from .textures import PALETTE, white_noise

GRID = 24  # warp grid cells per side
SCENES = ("surface", "hanger", "worn")
_TOPS = ("tshirt", "long_sleeve_top", "tank_top", "shirt", "hoodie", "sweater", "jacket", "dress")
_SKIN = np.float32([[0.96, 0.80, 0.69], [0.88, 0.68, 0.54], [0.76, 0.56, 0.40],
                    [0.58, 0.40, 0.28], [0.40, 0.27, 0.19], [0.27, 0.18, 0.13]])
_MANNEQUIN = np.float32([[0.93, 0.92, 0.9], [0.16, 0.16, 0.17], [0.82, 0.72, 0.6]])


@dataclass
class WildRender:
    """`image` (S, S, 3) uint8 RGB; `mask` (S, S) bool visible garment pixels; `occluder_mask`
    (S, S) bool pixels covered by hands, hanger or objects; `landmarks` (N, 2) float32 in the
    wild image's unit square (x, y; may fall outside [0, 1] when out of frame); `visibility`
    (N,) uint8, 1 = visible, 0 = occluded, self-occluded or out of frame. `jpeg` is the JPEG
    file the photo went through; decoding it gives `image` exactly. `flat_coords` (S, S, 2)
    float32, only when asked for: the true correspondence, where on the flat-lay (its unit
    square, x, y) lies the cloth that each pixel shows (the front-most layer; NaN where no
    layer covers the pixel; occluders are not subtracted: `mask` says what shows)."""

    image: np.ndarray
    mask: np.ndarray
    occluder_mask: np.ndarray
    landmarks: np.ndarray
    visibility: np.ndarray
    attributes: dict
    jpeg: bytes
    flat_coords: np.ndarray | None = None


# ---- geometry ------------------------------------------------------------------------------


def decode_jpeg(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of a JPEG file."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 H with dst ~ H @ src for four point pairs (DLT, h33 = 1)."""
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b.extend([u, v])
    h = np.linalg.solve(np.asarray(a, np.float64), np.asarray(b, np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def _apply_h(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = pts @ h[:, :2].T + h[:, 2]
    return p[..., :2] / p[..., 2:3]


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


class _Drape:
    """Backward cloth displacement d(q) in canonical units: a thin-plate spline through random
    control displacements plus fold ridges; canonical p = q - d(q). Also the ridge height."""

    def __init__(self, rng: np.random.Generator, box: np.ndarray, difficulty: float,
                 vertical_folds: bool):
        (x0, y0), (x1, y1) = box
        k = 8
        self.c = np.stack([rng.uniform(x0, x1, k), rng.uniform(y0, y1, k)], 1)
        sigma = 0.004 + 0.016 * difficulty
        delta = rng.normal(0, sigma, (k, 2))
        phi = self._phi(self.c, self.c)
        p = np.hstack([np.ones((k, 1)), self.c])
        a = np.zeros((k + 3, k + 3))
        a[:k, :k], a[:k, k:], a[k:, :k] = phi + 1e-6 * np.eye(k), p, p.T
        rhs = np.vstack([delta, np.zeros((3, 2))])
        sol = np.linalg.solve(a, rhs)
        self.w, self.aff = sol[:k], sol[k:]
        m = int(round(3 + 12 * difficulty * rng.uniform(0.6, 1.0)))
        self.rc = np.stack([rng.uniform(x0, x1, m), rng.uniform(y0, y1, m)], 1)
        base = np.pi / 2 if vertical_folds else 0.0
        spread = 0.35 if vertical_folds else np.pi
        ang = base + rng.uniform(-spread, spread, m)
        self.rt = np.stack([np.cos(ang), np.sin(ang)], 1)
        self.rl = rng.uniform(0.06, 0.3, m)
        self.rw = rng.uniform(0.007, 0.022, m)
        self.ra = rng.choice([-1, 1], m) * rng.uniform(0.25, 1.0, m) * self.rw * (
            0.4 + 0.8 * difficulty)
        self.gain = np.minimum(0.6 * self.ra**2 / self.rw, 0.6 * self.rw)
        self.scale = 1.0

    @staticmethod
    def _phi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        r2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * (a @ b.T)
        r2 = np.maximum(r2, 0.0)
        return 0.5 * r2 * np.log(r2 + 1e-12)

    def _ridges(self, q: np.ndarray):
        normal = np.stack([-self.rt[:, 1], self.rt[:, 0]], 1)
        par = q @ self.rt.T - (self.rc * self.rt).sum(1)
        perp = q @ normal.T - (self.rc * normal).sum(1)
        env = np.exp(-((par / self.rl) ** 2) - (perp / self.rw) ** 2)
        return par, perp, normal, env

    def displacement(self, q: np.ndarray) -> np.ndarray:
        tps = self._phi(q, self.c) @ self.w + self.aff[0] + q @ self.aff[1:]
        # Cloth gathers into a fold: near the ridge each screen pixel shows more cloth.
        par, perp, normal, _ = self._ridges(q)
        pull = -np.tanh(perp / self.rw) * self.gain * np.exp(
            -((perp / (2.5 * self.rw)) ** 2) - (par / self.rl) ** 2)
        return self.scale * (tps + pull @ normal)

    def height_and_gradient(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        par, perp, normal, env = self._ridges(q)
        h = env @ self.ra
        dpar = -2 * par / self.rl**2 * env * self.ra
        dperp = -2 * perp / self.rw**2 * env * self.ra
        grad = dpar @ self.rt + dperp @ normal
        return h, grad


def _bilinear(nodes: np.ndarray, xs: np.ndarray, pts: np.ndarray):
    """The piecewise-bilinear map given at node positions xs (both axes), at pts (N, 2):
    values (N, 2) and the partial derivatives along x and along y, each (N, 2)."""
    ix = np.clip(np.searchsorted(xs, pts[:, 0]) - 1, 0, len(xs) - 2)
    iy = np.clip(np.searchsorted(xs, pts[:, 1]) - 1, 0, len(xs) - 2)
    wx, wy = (xs[ix + 1] - xs[ix])[:, None], (xs[iy + 1] - xs[iy])[:, None]
    tx = (pts[:, :1] - xs[ix][:, None]) / wx
    ty = (pts[:, 1:] - xs[iy][:, None]) / wy
    a, b = nodes[iy, ix], nodes[iy, ix + 1]
    c, d = nodes[iy + 1, ix], nodes[iy + 1, ix + 1]
    top, bottom = a + (b - a) * tx, c + (d - c) * tx
    value = top + (bottom - top) * ty
    ddx = ((b - a) * (1 - ty) + (d - c) * ty) / wx
    ddy = (bottom - top) / wy
    return value, ddx, ddy


def _invert(nodes: np.ndarray, xs: np.ndarray, target: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Solve bilinear-map(x) = target by Newton from x0 (all (N, 2), output pixels)."""
    x = x0.copy()
    for _ in range(4):
        f, fx, fy = _bilinear(nodes, xs, x)
        f = f - target
        det = fx[:, 0] * fy[:, 1] - fx[:, 1] * fy[:, 0]
        det = np.where(np.abs(det) < 1e-12, 1e-12, det)
        dx = (f[:, 0] * fy[:, 1] - f[:, 1] * fy[:, 0]) / det
        dy = (fx[:, 0] * f[:, 1] - fx[:, 1] * f[:, 0]) / det
        x = x - np.stack([dx, dy], 1)
    return x


@functools.lru_cache(maxsize=8)
def _interp_weights(size: int, nodes: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel centre: the grid cell index (S,) and the position inside it (S, 1)."""
    centres = np.arange(size) + 0.5
    xs = np.asarray(nodes)
    i = np.clip(np.searchsorted(xs, centres) - 1, 0, len(xs) - 2)
    t = (centres - xs[i]) / (xs[i + 1] - xs[i])
    return i, t[:, None]


def _dense(grid: np.ndarray, xs: np.ndarray, size: int, win: tuple[slice, slice]) -> np.ndarray:
    """Upsample an (G+1, G+1) node grid to the pixel centres of window `win` (rows, cols) of
    the (S, S) image, exactly bilinear inside each grid cell."""
    i, t = _interp_weights(size, tuple(xs.tolist()))
    ri, rt = i[win[0]], t[win[0]]
    ci, ct = i[win[1]], t[win[1]].T
    rows = grid[ri] * (1 - rt) + grid[ri + 1] * rt
    return rows[:, ci] * (1 - ct) + rows[:, ci + 1] * ct


def _sample_rgba(layer: np.ndarray, sx: np.ndarray, sy: np.ndarray,
                 bbox: np.ndarray) -> np.ndarray:
    """Bilinear lookup of an (S, S, 4) uint8 layer at source pixel coords (sx, sy), any shape
    (H, W); pixels whose source lies outside the part's bbox stay transparent.
    Returns (H, W, 4) float32 in [0, 1]."""
    size = layer.shape[0]
    out = np.zeros((sx.size, 4), np.float32)
    x = sx.ravel() - 0.5
    y = sy.ravel() - 0.5
    sel = np.flatnonzero((x > bbox[0] - 2) & (x < bbox[2] + 1) & (y > bbox[1] - 2)
                         & (y < bbox[3] + 1))
    if sel.size:
        x, y = x[sel], y[sel]
        x0 = np.clip(np.floor(x), 0, size - 2).astype(np.int32)
        y0 = np.clip(np.floor(y), 0, size - 2).astype(np.int32)
        tx = np.clip(x - x0, 0, 1).astype(np.float32)[:, None]
        ty = np.clip(y - y0, 0, 1).astype(np.float32)[:, None]
        flat = layer.reshape(-1, 4)
        i = y0 * size + x0
        top = flat[i] * (1 - tx) + flat[i + 1] * tx
        bottom = flat[i + size] * (1 - tx) + flat[i + size + 1] * tx
        out[sel] = (top * (1 - ty) + bottom * ty) * np.float32(1 / 255)
    return out.reshape(*sx.shape, 4)


def _forward_drape(drape: _Drape, p: np.ndarray) -> np.ndarray:
    """Garment-space q with q - d(q) = p, by fixed-point iteration (d is a contraction)."""
    q = p.copy()
    for _ in range(8):
        q = p + drape.displacement(q)
    return q


def _creases(rng, n: int, box: np.ndarray, hanging: bool, size: int, to_px,
             win: tuple[slice, slice]) -> np.ndarray:
    """Multiplicative shading of n sharp creases over the image window `win` (rows, cols),
    float32: a dark fold line with a highlight beside it, drawn along curves on the garment
    (canonical `box`) and mapped into the photo by `to_px`."""
    r0, c0 = win[0].start, win[1].start
    layer = Image.new("L", (win[1].stop - c0, win[0].stop - r0), 128)
    draw = ImageDraw.Draw(layer)
    (x0, y0), (x1, y1) = box
    t = np.linspace(0, 1, 6)[:, None]
    for _ in range(n):
        start = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
        ang = np.pi / 2 + rng.uniform(-0.4, 0.4) if hanging else rng.uniform(0, np.pi)
        direction = np.array([np.cos(ang), np.sin(ang)])
        length = rng.uniform(0.05, 0.25)
        bend = rng.uniform(-0.3, 0.3) * length * np.array([-direction[1], direction[0]])
        pts = start + t * length * direction + 4 * t * (1 - t) * bend
        px = to_px(pts) - [c0, r0]
        normal = np.array([-(px[-1] - px[0])[1], (px[-1] - px[0])[0]])
        normal /= np.linalg.norm(normal) + 1e-9
        depth = int(rng.uniform(25, 60))
        w = max(1, round(size / 200))
        draw.line([tuple(p) for p in px + normal * 1.2 * w], fill=128 + depth // 2, width=w)
        draw.line([tuple(p) for p in px], fill=128 - depth, width=w)
    layer = layer.filter(ImageFilter.GaussianBlur(0.5 * size / 256 + 0.3))
    return np.asarray(layer, np.float32) * np.float32(1 / 128)


def _bbox_window(mask: Image.Image, margin: int) -> tuple[slice, slice] | None:
    """(rows, cols) slices around the non-zero pixels of an 'L' image, or None if empty."""
    box = mask.getbbox()
    if box is None:
        return None
    x0, y0, x1, y1 = box
    width, height = mask.size
    return (slice(max(y0 - margin, 0), min(y1 + margin, height)),
            slice(max(x0 - margin, 0), min(x1 + margin, width)))


# ---- drawing helpers -----------------------------------------------------------------------


def _u8(c) -> tuple[int, int, int]:
    c = np.clip(np.asarray(c, np.float32) * 255, 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def _capsule(draw: ImageDraw.ImageDraw, a, b, width: float, fill) -> None:
    draw.line([tuple(a), tuple(b)], fill=fill, width=max(1, int(width)))
    for p in (a, b):
        r = width / 2
        draw.ellipse((p[0] - r, p[1] - r, p[0] + r, p[1] + r), fill=fill)


def _draw_hand(draw, grip: np.ndarray, inward: np.ndarray, unit: float, skin, rng) -> None:
    """A hand holding the garment at `grip`: palm outside, fingers over the cloth."""
    side = np.array([-inward[1], inward[0]])
    palm = grip - inward * 0.55 * unit
    r = 0.5 * unit
    draw.ellipse((palm[0] - r, palm[1] - r, palm[0] + r, palm[1] + r), fill=skin)
    wrist = palm - inward * 1.2 * unit
    _capsule(draw, palm, wrist, 0.85 * unit, skin)
    curl = float(rng.uniform(0.5, 0.9))
    for k, off in enumerate((-0.36, -0.12, 0.12, 0.36)):
        base = palm + side * off * unit + inward * 0.3 * unit
        tip = base + inward * (0.55 + 0.12 * (k in (1, 2))) * unit * curl
        _capsule(draw, base, tip, 0.2 * unit, skin)
    thumb = palm + side * 0.45 * unit
    _capsule(draw, thumb, thumb + (side * 0.35 + inward * 0.4) * unit, 0.22 * unit, skin)


# ---- the renderer --------------------------------------------------------------------------


def render_wild(shape: GarmentShape, flat: FlatLayers, size: int, rng: np.random.Generator,
                difficulty: float, scene: str | None = None, coords: bool = False
                ) -> WildRender:
    """Render the garment in the wild; see `WildRender` for the outputs (`coords`: also the
    true correspondence, `flat_coords`; the photo is the same either way)."""
    d = float(np.clip(difficulty, 0.0, 1.0))
    top = shape.category in _TOPS
    if scene is None:
        scene = str(rng.choice(SCENES, p=[0.45, 0.25, 0.3]))
    attrs: dict = {"scene": scene, "difficulty": round(d, 4)}
    names_part = shape.landmark_part
    lm = shape.landmarks

    # 1. Sleeves: hang, fold across the body or tuck behind; each about its shoulder.
    bends: dict[str, float] = {}
    z_of = {p.name: p.z for p in shape.parts}
    for part in shape.parts:
        if part.pivot is None:
            continue
        sign = 1.0 if part.name.endswith("_r") else -1.0
        cuff = np.mean([lm[i] for i, n in enumerate(names_part) if n == part.name], 0)
        axis = cuff - part.pivot
        angle_now = np.rad2deg(np.arctan2(axis[1], abs(axis[0])))
        if scene in ("hanger", "worn"):
            target = rng.uniform(62, 84) if angle_now > 40 else angle_now + rng.uniform(5, 25)
            delta = target - angle_now
        else:
            delta = rng.uniform(-30, 30) * d
            u = rng.random()
            if u < 0.2 * d and angle_now > 40:
                delta = rng.uniform(95, 140)  # folded across the front
            elif u < 0.3 * d:
                delta = rng.uniform(50, 110)
                z_of[part.name] = 0  # tucked behind the torso
        bends[part.name] = float(sign * delta)
    attrs["sleeve_bends"] = {k: round(v, 2) for k, v in bends.items()}
    attrs["sleeves_tucked"] = sorted(k for k, z in z_of.items() if z == 0 and k in bends)

    def rot_about(part_name: str, pts: np.ndarray, inverse: bool) -> np.ndarray:
        if part_name not in bends:
            return pts
        part = next(p for p in shape.parts if p.name == part_name)
        r = _rotation(-bends[part_name] if inverse else bends[part_name])
        return (pts - part.pivot) @ r.T + part.pivot

    # 2. Placement: similarity + perspective, as a homography canonical -> output pixels.
    allpts = np.concatenate([rot_about(p.name, p.polygon, False) for p in shape.parts])
    lo, hi = allpts.min(0), allpts.max(0)
    centre, extent = 0.5 * (lo + hi), float((hi - lo).max())
    fill = rng.uniform(0.55, 0.82) + 0.2 * d * rng.random()
    rot_range = {"surface": 12 + 168 * d, "hanger": 3 + 6 * d, "worn": 4 + 8 * d}[scene]
    rotation = float(rng.uniform(-rot_range, rot_range))
    shift = rng.uniform(-0.06 - 0.1 * d, 0.06 + 0.1 * d, 2)
    if scene == "hanger":
        shift[1] = abs(shift[1]) + 0.04  # leave room for the hook
    scale = fill * size / extent
    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    dst = (corners - centre) @ (_rotation(rotation).T * scale) + size * (0.5 + shift)
    jitter = (0.015 + 0.09 * d) * size if scene == "surface" else (0.01 + 0.04 * d) * size
    dst = dst + rng.uniform(-jitter, jitter, (4, 2))
    h = _homography(corners, dst)
    h_inv = np.linalg.inv(h)
    attrs.update(rotation=round(rotation, 2), fill=round(float(fill), 4),
                 perspective_jitter=round(float(jitter / size), 4))

    # 3. Drape and folds, in canonical garment space; shrink until the map stays one-to-one.
    drape = _Drape(rng, np.stack([lo, hi]), d, vertical_folds=scene != "surface")
    attrs["folds"] = len(drape.ra)
    xs = np.round(np.linspace(0, size, GRID + 1)).astype(np.float64)
    gx, gy = np.meshgrid(xs, xs)
    out_nodes = np.stack([gx, gy], -1).reshape(-1, 2)
    q_nodes = _apply_h(h_inv, out_nodes)
    for _ in range(4):
        p_nodes = q_nodes - drape.displacement(q_nodes)
        grid = p_nodes.reshape(GRID + 1, GRID + 1, 2)
        ax, ay = grid[:, 1:] - grid[:, :-1], grid[1:] - grid[:-1]
        det = ax[:-1, :, 0] * ay[:, :-1, 1] - ax[:-1, :, 1] * ay[:, :-1, 0]
        if det.min() > 0.25 * np.median(det):
            break
        drape.scale *= 0.5

    # 4. Warp each part layer with its own backward map (bilinear between grid nodes), inside
    # the window where the part can land.
    part_grids: dict[str, np.ndarray] = {}
    warped: dict[str, np.ndarray] = {}
    sources: dict[str, tuple] = {}  # part -> (window, source x, source y), for `coords`
    for part, layer in zip(flat.parts, flat.layers, strict=True):
        src = rot_about(part.name, p_nodes, True).reshape(GRID + 1, GRID + 1, 2) * size
        part_grids[part.name] = src
        # Output window: grid cells whose source corners come near the part's bounding box.
        bbox = np.concatenate([part.polygon.min(0), part.polygon.max(0)]) * size
        cell = size / GRID
        near = ((src[..., 0] > bbox[0] - 2 * cell) & (src[..., 0] < bbox[2] + 2 * cell)
                & (src[..., 1] > bbox[1] - 2 * cell) & (src[..., 1] < bbox[3] + 2 * cell))
        rows_n, cols_n = np.flatnonzero(near.any(1)), np.flatnonzero(near.any(0))
        if rows_n.size:
            lo_px = np.array([xs[max(cols_n[0] - 1, 0)], xs[max(rows_n[0] - 1, 0)]], int)
            hi_px = np.array([xs[min(cols_n[-1] + 1, GRID)], xs[min(rows_n[-1] + 1, GRID)]], int)
        else:
            lo_px = hi_px = np.zeros(2, int)
        rgba = np.zeros((size, size, 4), np.float32)
        if (hi_px > lo_px).all():
            win = (slice(lo_px[1], hi_px[1]), slice(lo_px[0], hi_px[0]))
            dense_x = _dense(src[..., 0], xs, size, win)
            dense_y = _dense(src[..., 1], xs, size, win)
            rgba[win] = _sample_rgba(np.asarray(layer), dense_x, dense_y, bbox)
            if coords:
                sources[part.name] = (win, dense_x, dense_y)
        warped[part.name] = rgba
    order = sorted(warped, key=lambda n: (z_of[n], n))
    flat_coords = None
    if coords:
        # Painted back to front, as the layers are composited below.
        flat_coords = np.full((size, size, 2), np.nan, np.float32)
        for name in order:
            if name in sources:
                win, sx, sy = sources[name]
                over = warped[name][win][..., 3] >= 0.5
                flat_coords[win][over] = np.stack([sx[over], sy[over]], -1) / size

    # 5. Landmarks: analytic forward map, refined on the rendered piecewise-bilinear map.
    p_rot = lm.copy()
    for name in set(names_part):
        idx = [i for i, n in enumerate(names_part) if n == name]
        p_rot[idx] = rot_about(name, lm[idx], False)
    out = _apply_h(h, _forward_drape(drape, p_rot))
    for name in set(names_part):
        idx = [i for i, n in enumerate(names_part) if n == name]
        out[idx] = _invert(part_grids[name], xs, lm[idx] * size, out[idx])

    # 6. Background, body support, cast shadow.
    bg, bg_attrs = sample_background(rng, size, "surface" if scene == "surface" else "scene")
    attrs["background"] = bg_attrs
    img = bg * np.float32(rng.uniform(0.8, 1.1))
    alphas = {n: warped[n][..., 3] for n in order}
    union = np.maximum.reduce([alphas[n] for n in order])
    unit = scale * 0.1  # a tenth of the canonical canvas, in output pixels
    off = rng.uniform(-1, 1, 2) * (0.015 if scene == "surface" else 0.04) * size
    blur = (0.008 + 0.02 * rng.random()) * size if scene == "surface" else 0.03 * size
    strength = rng.uniform(0.25, 0.5) if scene == "surface" else rng.uniform(0.15, 0.35)
    union_img = Image.fromarray((union * 255).astype(np.uint8))
    shadow_win = _bbox_window(union_img, int(3 * blur + np.abs(off).max()) + 2)
    if shadow_win is not None:
        shadow = soft_blur(union[shadow_win], blur, off)
        img[shadow_win] *= (1 - strength * shadow)[..., None]
    if scene == "worn":
        img = _draw_body(img, shape, out, rng, unit, top, attrs)

    # 7. Garment layers with fold shading, each casting a soft shadow on what lies below.
    n_fine = 2 * GRID + 1
    fine = np.round(np.linspace(0, size, n_fine)).astype(np.float64)
    fx, fy = np.meshgrid(fine, fine)
    qf = _apply_h(h_inv, np.stack([fx, fy], -1).reshape(-1, 2))
    hgt, grad = drape.height_and_gradient(qf)
    # Crumple: low-frequency bumps everywhere, stronger for cloth lying on a surface.
    crumple = (0.1 + 0.45 * d) * (1.2 if scene == "surface" else 0.5)
    bumps = np.asarray(Image.fromarray(rng.standard_normal((9, 9)).astype(np.float32), mode="F")
                       .resize((n_fine, n_fine), Image.Resampling.BICUBIC), np.float64)
    by, bx = np.gradient(bumps * crumple * 0.06)
    grad = grad + np.stack([bx.ravel(), by.ravel()], 1) * (scale * (n_fine - 1) / size)
    light = np.array([*rng.uniform(-0.6, 0.6, 2), 1.0])
    light /= np.linalg.norm(light)
    normal = np.concatenate([-grad, np.ones((len(grad), 1))], 1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    lambert = (normal @ light) / light[2]
    # A light fall-off across the frame, linear, so it can be applied on the node grid.
    ramp_dir = rng.normal(0, 1, 2)
    ramp_dir = (0.05 + 0.2 * d) * ramp_dir / (np.abs(ramp_dir).sum() + 1e-6)
    ramp = 1 + (np.stack([fx, fy], -1).reshape(-1, 2) / size - 0.5) @ ramp_dir
    shade_small = np.clip(lambert * (1 + 4.0 * hgt) * ramp, 0.4, 1.4)
    shade = np.asarray(Image.fromarray(shade_small.reshape(n_fine, n_fine).astype(np.float32),
                                       mode="F").resize((size, size), Image.Resampling.BICUBIC))
    n_creases = int(rng.integers(1, 3 + int(9 * d))) if rng.random() < 0.4 + 0.6 * d else 0
    attrs["creases"] = n_creases
    # Composite inside the garment's bounding window only (plus room for cast shadows).
    rows, cols = np.flatnonzero(union.any(1)), np.flatnonzero(union.any(0))
    if rows.size:
        m = int(0.05 * size)
        win = (slice(max(rows[0] - m, 0), min(rows[-1] + m + 1, size)),
               slice(max(cols[0] - m, 0), min(cols[-1] + m + 1, size)))
        sh = shade[win]
        if n_creases:
            sh = sh * _creases(rng, n_creases, np.stack([lo, hi]), scene != "surface", size,
                               lambda pts: _apply_h(h, _forward_drape(drape, pts)), win)
        sub, sh = img[win].copy(), sh[..., None]
        for k, name in enumerate(order):
            a = alphas[name]
            if k > 0:
                cast = soft_blur(a, 0.012 * size, (0.006 * size, 0.01 * size))[win]
                sub *= (1 - 0.3 * cast * (1 - a[win]))[..., None]
            aw = a[win][..., None]
            layer_rgb = warped[name][win][..., :3] * sh
            layer_rgb -= sub
            layer_rgb *= aw
            sub += layer_rgb
        img[win] = sub

    # 8. Occluders: hanger, hands, objects; each with a soft shadow.
    occ = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(occ)
    kinds: list[str] = []
    names = list(landmark_names(shape.category))
    if scene == "hanger":
        _draw_hanger(draw, names, out, unit, top, rng)
        kinds.append("hanger")
    n_hands = int(rng.random() < 0.12 + 0.45 * d) + int(rng.random() < 0.2 * d)
    contour_idx = [i for i, n in enumerate(names) if not n.startswith(("neckline", "neck_front",
                                                                       "collar_"))]
    centre_px = out.mean(0)
    skin = _SKIN[int(rng.integers(len(_SKIN)))] * np.float32(rng.uniform(0.9, 1.05))
    for _ in range(n_hands):
        i = int(rng.choice(contour_idx))
        inward = centre_px - out[i]
        inward /= np.linalg.norm(inward) + 1e-9
        _draw_hand(draw, out[i] + inward * 0.1 * unit, inward, 0.55 * unit, _u8(skin), rng)
        kinds.append("hand")
    n_objects = int(rng.random() < 0.1 + 0.4 * d) + int(rng.random() < 0.15 * d)
    for _ in range(n_objects):
        _draw_object(occ, out[int(rng.integers(len(out)))], unit, size, rng)
        kinds.append("object")
    attrs["occluders"] = kinds
    occ_alpha = occ.getchannel("A")
    win = _bbox_window(occ_alpha, int(0.07 * size))
    occluder_mask = np.zeros((size, size), bool)
    if win is not None:
        occ_a = np.asarray(occ_alpha, np.float32)[win] * np.float32(1 / 255)
        sub = img[win]
        cast = soft_blur(occ_a, 0.015 * size, (0.015 * size, 0.02 * size))
        sub *= (1 - 0.35 * cast * (1 - occ_a))[..., None]
        occ_rgb = np.asarray(occ.convert("RGB"), np.float32)[win] * np.float32(1 / 255)
        occ_shade = 0.85 + 0.3 * soft_blur(occ_a, 0.01 * size, (0.0, 0.0))
        sub += (occ_rgb * occ_shade[..., None] - sub) * occ_a[..., None]
        occluder_mask[win] = occ_a >= 0.5

    # 9. Camera: white balance, exposure, vignette, blur, noise, JPEG.
    wb = np.exp(rng.normal(0, 0.04 + 0.1 * d, 3)).astype(np.float32)
    exposure = float(np.exp(rng.normal(0, 0.08 + 0.15 * d)))
    yy = (np.arange(size, dtype=np.float32) / size - 0.5) ** 2
    vignette = 1 - np.float32((0.1 + 0.35 * d) * rng.random() * 2) * (yy[None, :] + yy[:, None])
    noise_std = float(rng.uniform(0, 0.01 + 0.035 * d))
    img *= vignette[..., None] * (wb * np.float32(255 * exposure))
    # Sensor noise, mostly luminance; +0.5 rounds on the uint8 cast.
    noise = white_noise(rng, size) * np.float32(255 * noise_std)
    noise += np.float32(0.5)
    img += noise[..., None]
    np.clip(img, 0, 255, out=img)
    pil = Image.fromarray(img.astype(np.uint8))
    blur_r = float(rng.uniform(0, 0.25 + 1.2 * d)) * size / 256
    if rng.random() > 0.3 + 0.6 * d:
        blur_r = 0.0  # many photos are sharp
    if blur_r > 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(blur_r))
    quality = int(rng.integers(int(92 - 55 * d), int(98 - 30 * d) + 1))
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    jpeg = buf.getvalue()
    image = decode_jpeg(jpeg)
    attrs["camera"] = {"white_balance": [round(float(g), 4) for g in wb],
                       "exposure": round(exposure, 4), "noise": round(noise_std, 4),
                       "blur": round(blur_r, 3), "jpeg_quality": quality}

    # 10. Masks and visibility.
    mask = (union >= 0.5) & ~occluder_mask
    vis = np.zeros(len(out), np.uint8)
    for i, p in enumerate(out):
        x, y = int(np.floor(p[0])), int(np.floor(p[1]))
        if not (0 <= x < size and 0 <= y < size) or occluder_mask[y, x]:
            continue
        x0, x1, y0, y1 = max(x - 1, 0), min(x + 2, size), max(y - 1, 0), min(y + 2, size)
        own = names_part[i]
        above = [n for n in order if (z_of[n], n) > (z_of[own], own)]
        if any(alphas[n][y0:y1, x0:x1].min() > 0.8 for n in above):
            continue  # under a sleeve or another layer of the same garment
        if not mask[y0:y1, x0:x1].any():
            continue  # a corner pixel left between occluders: nothing of it shows
        vis[i] = 1
    return WildRender(image=image, mask=mask, occluder_mask=occluder_mask,
                      landmarks=(out / size).astype(np.float32), visibility=vis, attributes=attrs,
                      jpeg=jpeg, flat_coords=flat_coords)


def _draw_hanger(draw, names, out, unit, top, rng) -> None:
    metal = _u8([0.7, 0.7, 0.72] if rng.random() < 0.6 else [0.2, 0.2, 0.22])
    wood = _u8([0.62, 0.42, 0.24] if rng.random() < 0.5 else [0.9, 0.9, 0.88])
    idx = {n: i for i, n in enumerate(names)}
    if top:
        anchor = out[idx.get("neck_back", idx.get("collar_back", idx.get("hood_top", 0)))]
        nl, nr = out[idx["neck_l"]], out[idx["neck_r"]]
        _capsule(draw, nl + [0, 0.04 * unit], nr + [0, 0.04 * unit], 0.3 * unit, wood)
    else:
        wl, wr = out[idx["waist_l"]], out[idx["waist_r"]]
        anchor = 0.5 * (wl + wr) - [0, 0.35 * unit]
        bar_l, bar_r = wl - [0.25 * unit, 0.35 * unit], wr + [0.25 * unit, -0.35 * unit]
        _capsule(draw, bar_l, bar_r, 0.2 * unit, metal)
        for p in (wl + 0.15 * (wr - wl), wr + 0.15 * (wl - wr)):
            draw.rectangle((p[0] - 0.18 * unit, p[1] - 0.45 * unit, p[0] + 0.18 * unit,
                            p[1] + 0.2 * unit), fill=wood)
    stem_top = anchor - [0, 0.7 * unit]
    _capsule(draw, anchor + [0, 0.1 * unit], stem_top, 0.12 * unit, metal)
    r = 0.35 * unit
    cx, cy = stem_top[0] + r, stem_top[1]
    draw.arc((cx - r, cy - r, cx + r, cy + r), 180, 360, fill=metal, width=max(1, int(0.12 *
                                                                                      unit)))


def _draw_object(occ: Image.Image, near: np.ndarray, unit: float, size: int, rng) -> None:
    """A real-photo object (a crop of another photo, shaped as a disc, card or phone)."""
    name = str(rng.choice(list(PHOTOS)))
    w, h = load_photo(name).size
    side = float(rng.uniform(0.2, 0.6)) * min(w, h)
    x0, y0 = float(rng.uniform(0, w - side)), float(rng.uniform(0, h - side))
    ext = int(np.clip(rng.uniform(1.2, 3.2) * unit, 8, size))
    patch = crop_background(name, (x0, y0, x0 + side, y0 + side), False, ext)
    patch_img = Image.fromarray((patch * 255).astype(np.uint8)).convert("RGBA")
    mask = Image.new("L", (ext, ext), 0)
    md = ImageDraw.Draw(mask)
    kind = int(rng.integers(3))
    if kind == 0:
        md.ellipse((0, 0, ext - 1, ext - 1), fill=255)
    elif kind == 1:
        md.rounded_rectangle((0, ext * 0.2, ext - 1, ext * 0.8), radius=ext * 0.08, fill=255)
    else:
        md.rounded_rectangle((ext * 0.25, 0, ext * 0.75, ext - 1), radius=ext * 0.1, fill=255)
        md.rounded_rectangle((ext * 0.29, ext * 0.05, ext * 0.71, ext * 0.95), radius=ext * 0.05,
                             fill=255)
    angle = float(rng.uniform(0, 360))
    patch_img.putalpha(mask)
    patch_img = patch_img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False)
    pos = near + rng.uniform(-0.8, 0.8, 2) * unit - ext / 2
    _paste_clipped(occ, patch_img, pos)


def _paste_clipped(occ: Image.Image, patch: Image.Image, pos: np.ndarray) -> None:
    """Alpha-composite `patch` at `pos` (may be partly off the top or left edge)."""
    x, y = int(pos[0]), int(pos[1])
    cx, cy = max(0, -x), max(0, -y)
    if cx >= patch.width or cy >= patch.height:
        return
    occ.alpha_composite(patch.crop((cx, cy, patch.width, patch.height)), (x + cx, y + cy))


def _draw_body(img: np.ndarray, shape: GarmentShape, out: np.ndarray, rng, unit: float, top: bool,
               attrs: dict) -> np.ndarray:
    """A body-like support behind the garment: neck, head and arms, or waist and legs."""
    size = img.shape[0]
    if rng.random() < 0.5:
        colour = _SKIN[int(rng.integers(len(_SKIN)))]
        attrs["support"] = "body"
    else:
        colour = _MANNEQUIN[int(rng.integers(len(_MANNEQUIN)))]
        attrs["support"] = "mannequin"
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    names = landmark_names(shape.category)
    idx = {n: i for i, n in enumerate(names)}

    def at(name: str) -> np.ndarray:
        return out[idx[name]]

    other = Image.new("L", (size, size), 0)
    od = ImageDraw.Draw(other)
    hair = Image.new("L", (size, size), 0)
    hd = ImageDraw.Draw(hair)
    if top:
        nl, nr = at("neck_l"), at("neck_r")
        mid = 0.5 * (nl + nr)
        up = np.array([0.0, -1.0])
        neck_w = 0.75 * np.linalg.norm(nr - nl)
        _capsule(draw, mid + [0, 0.2 * unit], mid + up * 1.1 * unit, neck_w, 255)
        head = mid + up * 2.4 * unit
        draw.ellipse((head[0] - 0.9 * unit, head[1] - 1.15 * unit, head[0] + 0.9 * unit,
                      head[1] + 1.15 * unit), fill=255)
        if attrs["support"] == "body":  # hair over the top and back of the head
            hd.ellipse((head[0] - 0.98 * unit, head[1] - 1.3 * unit, head[0] + 0.98 * unit,
                        head[1] + 0.1 * unit), fill=255)
            hd.rectangle((head[0] - 0.98 * unit, head[1] - 0.6 * unit, head[0] - 0.7 * unit,
                          head[1] + float(rng.uniform(0.2, 1.6)) * unit), fill=255)
            hd.rectangle((head[0] + 0.7 * unit, head[1] - 0.6 * unit, head[0] + 0.98 * unit,
                          head[1] + float(rng.uniform(0.2, 1.6)) * unit), fill=255)
        for side in ("l", "r"):
            if f"cuff_top_{side}" in idx:
                ct, cb = at(f"cuff_top_{side}"), at(f"cuff_bottom_{side}")
                sh = at(f"shoulder_{side}")
                cuff_mid = 0.5 * (ct + cb)
                axis = cuff_mid - sh
                axis /= np.linalg.norm(axis) + 1e-9
                width = 0.75 * np.linalg.norm(ct - cb)
                wrist = cuff_mid + axis * 2.2 * unit
                _capsule(draw, cuff_mid - axis * 0.3 * unit, wrist, width, 255)
                hand = wrist + axis * 0.45 * unit
                r = 0.55 * width + 0.1 * unit
                draw.ellipse((hand[0] - r, hand[1] - 1.2 * r, hand[0] + r, hand[1] + 1.2 * r),
                             fill=255)
            else:
                a = at(f"armpit_{side}")
                _capsule(draw, a, a + np.array([0.15 if side == "r" else -0.15, 1.0]) * 3 * unit,
                         0.55 * unit, 255)
        hl, hr = at("hem_l"), at("hem_r")
        for p in (0.7 * hl + 0.3 * hr, 0.3 * hl + 0.7 * hr):
            _capsule(od, p - [0, 0.2 * unit], p + [0, 6 * unit], 0.3 * np.linalg.norm(hr - hl),
                     255)
        other_colour = np.float32([0.15, 0.17, 0.22]) if shape.category != "dress" else colour
    else:
        wl, wr = at("waist_l"), at("waist_r")
        mid = 0.5 * (wl + wr)
        _capsule(od, mid + [0, 0.3 * unit], mid - [0, 6 * unit], 1.1 * np.linalg.norm(wr - wl),
                 255)
        legs = [("hem_outer_l", "hem_inner_l"), ("hem_outer_r", "hem_inner_r")] if (
            "hem_outer_l" in idx) else [("hem_l", "hem_mid_l"), ("hem_r", "hem_mid_r")]
        for a_name, b_name in legs:
            a, b = at(a_name), at(b_name)
            m = 0.5 * (a + b)
            _capsule(draw, m - [0, 0.3 * unit], m + [0, 4 * unit], 0.8 * np.linalg.norm(a - b),
                     255)
        other_colour = np.float32(list(PALETTE.values())[int(rng.integers(len(PALETTE)))]) / 255
    hair_colour = np.float32([[0.08, 0.06, 0.05], [0.25, 0.16, 0.1], [0.55, 0.42, 0.25],
                              [0.7, 0.6, 0.4]][int(rng.integers(4))])
    for mask_img, col in ((other, other_colour), (layer, colour), (hair, hair_colour)):
        win = _bbox_window(mask_img, int(unit) + 2)
        if win is None:
            continue
        a = np.asarray(mask_img, np.float32)[win] * np.float32(1 / 255)
        # Rounded shading: darker towards the silhouette of each limb.
        soft = soft_blur(a, 0.25 * unit, (0.0, 0.0))
        body = col * (0.65 + 0.4 * soft[..., None])
        sub = img[win]
        sub += (body - sub) * a[..., None]
    return img
