"""Sharded data sets of the garment world on disk, and their reader.

Layout of a data set directory:

    dataset.json             header: format, version, generator version, size, n, seed range,
                             splits, landmark names per category (written last: its presence
                             means the set is complete)
    manifest.jsonl           one JSON object per sample, in seed order (see `sample_record`)
    shard-00000/             up to `shard_size` samples each:
        0000042_wild.jpg         the in-the-wild photo: the very JPEG file it was made as
        0000042_wild_mask.png    (S, S) 1-bit visible garment mask
        0000042_occluder.png     (S, S) 1-bit occluder mask
        0000042_flat.png         (S, S, 3) RGB flat-lay
        0000042_flat_mask.png    (S, S) 1-bit flat-lay silhouette

Landmarks are stored in the manifest as float32 values written exactly, so a round trip
through `read_sample` gives back the arrays `generate` made, bit for bit.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from structure_bank.schema import CATEGORIES, landmark_names

from . import backgrounds
from .render_wild import decode_jpeg
from .sample import GENERATOR_VERSION, SPLITS, GarmentSample, generate, split_of

FORMAT = "flatlay-garments"
FORMAT_VERSION = 1
HEADER = "dataset.json"
MANIFEST = "manifest.jsonl"
_FILES = {"wild_image": "wild.jpg", "wild_mask": "wild_mask.png",
          "wild_occluder_mask": "occluder.png", "flat_image": "flat.png",
          "flat_mask": "flat_mask.png"}


def shard_name(index: int, shard_size: int) -> str:
    return f"shard-{index // shard_size:05d}"


def sample_record(sample: GarmentSample, files: dict[str, str]) -> dict:
    """The manifest line of a sample: identity, labels, landmarks and relative file paths."""
    return {
        "id": f"{sample.seed:07d}",
        "seed": sample.seed,
        "split": split_of(sample.seed),
        "category": sample.category,
        "family": sample.family,
        "difficulty": sample.difficulty,
        "size": sample.size,
        "flat_landmarks": sample.flat_landmarks.astype(np.float32).tolist(),
        "wild_landmarks": sample.wild_landmarks.astype(np.float32).tolist(),
        "wild_visibility": sample.wild_visibility.astype(int).tolist(),
        "attributes": sample.attributes,
        "files": files,
    }


def write_sample(root: Path, shard: str, sample: GarmentSample) -> dict:
    """Write a sample's images into `root/shard/` and return its manifest record."""
    (root / shard).mkdir(parents=True, exist_ok=True)
    files = {}
    for key, suffix in _FILES.items():
        rel = f"{shard}/{sample.seed:07d}_{suffix}"
        files[key] = rel
        if key == "wild_image":
            # The photo is already a JPEG: store that file, no second (lossy) encode.
            (root / rel).write_bytes(sample.wild_jpeg or _jpeg_of(sample.wild_image))
            continue
        array = getattr(sample, key)
        img = Image.fromarray(array) if array.dtype == np.uint8 else Image.fromarray(array).convert(
            "1")
        img.save(root / rel, compress_level=1)
    return sample_record(sample, files)


def _jpeg_of(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _work(job: tuple[str, str, int, int, str | None]) -> dict:
    root, shard, seed, size, family = job
    return write_sample(Path(root), shard, generate(seed, size=size, family=family))


def _clear_outputs(root: Path) -> None:
    for p in root.glob("shard-*"):
        if p.is_dir():
            shutil.rmtree(p)
    for name in (HEADER, MANIFEST):
        (root / name).unlink(missing_ok=True)


def write_dataset(root: str | Path, n: int, seed: int = 0, size: int = 256, workers: int = 1,
                  family: str | None = None, shard_size: int = 1000, overwrite: bool = False,
                  progress: Callable[[Iterator], Iterator] | None = None) -> dict:
    """Generate seeds [seed, seed + n) into `root`; returns the header.

    Results are identical for any `workers` (each seed is generated independently).
    `progress` wraps the record iterator (e.g. a tqdm factory). Refuses a non-empty `root`
    unless `overwrite`, which removes only a previous data set's own files.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty")
        _clear_outputs(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), shard_name(i, shard_size), seed + i, size, family) for i in range(n)]
    backgrounds.preload()  # decoded once here, shared by forked workers
    counts: dict[str, int] = {}
    with open(root / MANIFEST, "w", encoding="utf-8") as manifest:
        if workers > 1:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            pool = ctx.Pool(workers)
            records: Iterator[dict] = pool.imap(_work, jobs, chunksize=4)
        else:
            pool, records = None, map(_work, jobs)
        try:
            for record in (progress(records) if progress else records):
                manifest.write(json.dumps(record, separators=(",", ":")) + "\n")
                counts[record["category"]] = counts.get(record["category"], 0) + 1
        finally:
            if pool is not None:
                pool.terminate()
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "generator_version": GENERATOR_VERSION,
        "size": size,
        "n": n,
        "seed_start": seed,
        "seed_stop": seed + n,
        "family": family or "by seed",
        "shard_size": shard_size,
        "splits": {k: list(v) for k, v in SPLITS.items()},
        "category_counts": counts,
        "landmark_names": {c: list(landmark_names(c)) for c in CATEGORIES},
        "manifest": MANIFEST,
    }
    tmp = root / (HEADER + ".tmp")
    tmp.write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, root / HEADER)
    return header


def load_manifest(root: str | Path) -> tuple[dict, list[dict]]:
    """(header, records) of a complete data set written by `write_dataset`."""
    root = Path(root)
    header_path = root / HEADER
    if not header_path.exists():
        raise FileNotFoundError(f"{root} has no {HEADER}: not a (complete) garment data set")
    header = json.loads(header_path.read_text(encoding="utf-8"))
    if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
        raise ValueError(f"{header_path}: expected {FORMAT} version {FORMAT_VERSION}, got "
                         f"{header.get('format')} version {header.get('version')}")
    with open(root / header["manifest"], encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return header, records


def read_sample(root: str | Path, record: dict) -> GarmentSample:
    """Load one manifest record back into a `GarmentSample` (arrays as `generate` made them)."""
    root = Path(root)
    arrays = {}
    for key, rel in record["files"].items():
        if key == "wild_image":
            arrays["wild_jpeg"] = (root / rel).read_bytes()
            arrays[key] = decode_jpeg(arrays["wild_jpeg"])
            continue
        with Image.open(root / rel) as img:
            a = np.asarray(img)
        arrays[key] = a.astype(bool) if img.mode == "1" else a
    return GarmentSample(
        seed=record["seed"],
        category=record["category"],
        family=record["family"],
        difficulty=record["difficulty"],
        attributes=record["attributes"],
        flat_landmarks=np.asarray(record["flat_landmarks"], np.float32).reshape(-1, 2),
        wild_landmarks=np.asarray(record["wild_landmarks"], np.float32).reshape(-1, 2),
        wild_visibility=np.asarray(record["wild_visibility"], np.uint8),
        **arrays,
    )
