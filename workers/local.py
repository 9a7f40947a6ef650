"""`flatlay generate`: the worker's job on local files, no service, with a progress bar."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from models.io import ImageLimits, IngestError
from models.pipeline import PipelineError, load_pipelines
from service.settings import Settings
from workers.jobs import flatten_photo

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})


@dataclass
class LocalRun:
    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # input path → "code: message"


def find_photos(inputs: list[Path]) -> list[Path]:
    """Files as given; folders contribute their JPEG, PNG and WebP files (recursively).
    Raises FileNotFoundError for an input that does not exist."""
    photos: list[Path] = []
    for item in inputs:
        if item.is_dir():
            photos += sorted(p for p in item.rglob("*")
                             if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        elif item.is_file():
            photos.append(item)
        else:
            raise FileNotFoundError(str(item))
    return photos


def generate(
    photos: list[Path], out_dir: Path, pipeline: str, options: dict[str, Any],
    settings: Settings, show_progress: bool = True,
) -> LocalRun:
    """Run `pipeline` on each photo; results go to `out_dir/<stem>-flatlay.<ext>`.

    options: output_size, background, format, seed (as for `POST /assets`). A photo that
    fails is recorded in `failed` and the run goes on.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    load_pipelines([pipeline])
    limits = ImageLimits(settings.max_upload_bytes, settings.max_pixels, settings.min_image_side)
    ext = options["format"].replace("jpeg", "jpg")
    run = LocalRun()
    bar = tqdm(photos, unit="photo", desc=pipeline, disable=not show_progress)
    for photo in bar:
        bar.set_postfix_str(photo.name[-30:])
        try:
            data, _ = flatten_photo(photo.read_bytes(), pipeline, options, limits, {})
        except (IngestError, PipelineError) as exc:
            run.failed[str(photo)] = f"{exc.code}: {exc.message}"
            bar.write(f"{photo}: {exc.code}: {exc.message}", file=sys.stderr)
            continue
        target = out_dir / f"{photo.stem}-flatlay.{ext}"
        n = 2
        while target in run.written:  # the same stem from two folders
            target = out_dir / f"{photo.stem}-flatlay-{n}.{ext}"
            n += 1
        target.write_bytes(data)
        run.written.append(target)
    return run
