"""`flatlay generate`: the worker's job on local files, no service, with a progress bar.

Each photo gives its flat-lay, the pipeline's side outputs (`<stem>.<name>.<ext>`: mask,
landmarks, neighbours, overlay, those the pipeline produced) and its compliance check
(`<stem>.compliance.json`), where `<stem>` is the flat-lay's file name without its suffix.
A photo's files are written together or not at all.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from models.errors import TypedError
from models.pipeline import SIDE_OUTPUTS, load_pipelines
from service.outputs import file_ext
from service.settings import Settings
from workers.flatten import FlatLayOutput, flatten_photo

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
# The format an output file's suffix asks for.
SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


@dataclass
class LocalRun:
    written: list[Path] = field(default_factory=list)  # the flat-lays
    side_files: list[Path] = field(default_factory=list)  # side outputs and compliance files
    failed: dict[str, str] = field(default_factory=dict)  # input path → "code: message"
    compliance: dict[str, dict[str, Any]] = field(default_factory=dict)  # flat-lay → check

    @property
    def compliance_failed(self) -> list[str]:
        return [path for path, check in self.compliance.items() if not check["passed"]]


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


def side_paths(image: Path, names: list[str], side_dir: Path | None = None) -> dict[str, Path]:
    """Where the side outputs `names` (and "compliance") of flat-lay `image` go: beside it,
    or in `side_dir`, as `<image stem>.<name>.<ext>`."""
    folder = side_dir if side_dir is not None else image.parent
    paths = {name: folder / f"{image.stem}.{name}.{SIDE_OUTPUTS[name][0]}" for name in names}
    paths["compliance"] = folder / f"{image.stem}.compliance.json"
    return paths


def _write_together(files: dict[Path, bytes]) -> None:
    """Write every file or none: each goes to a temporary file first, then all are renamed;
    on an error, what was already renamed is removed again."""
    staged: list[tuple[Path, str]] = []
    done: list[Path] = []
    umask = os.umask(0)
    os.umask(umask)
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((path, tmp))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
        for path, tmp in staged:
            os.replace(tmp, path)
            done.append(path)
    except BaseException:
        for _, tmp in staged:
            Path(tmp).unlink(missing_ok=True)
        for path in done:
            path.unlink(missing_ok=True)
        raise


def _files_of(out: FlatLayOutput, image: Path, side_dir: Path | None) -> dict[Path, bytes]:
    paths = side_paths(image, list(out.side_outputs), side_dir)
    files = {image: out.data}
    files.update({paths[name]: data for name, data in out.side_outputs.items()})
    files[paths["compliance"]] = (json.dumps(out.compliance, indent=2) + "\n").encode()
    return files


def generate(
    photos: list[Path], out_dir: Path, pipeline: str, options: dict[str, Any],
    settings: Settings, show_progress: bool = True, out_file: Path | None = None,
    side_dir: Path | None = None,
) -> LocalRun:
    """Run `pipeline` on each photo; results go to `out_dir/<stem>-flatlay.<ext>` (or, for
    one photo, to `out_file`), side outputs beside them or into `side_dir`.

    options: preset, output_size, background, format, seed, structure (as stored for
    `POST /assets`, already checked). A photo that fails is recorded in `failed` and the
    run goes on.
    """
    load_pipelines([pipeline])
    limits = settings.image_limits()
    ext = file_ext(options["format"])
    run = LocalRun()
    taken: set[Path] = set()
    bar = tqdm(photos, unit="photo", desc=pipeline, disable=not show_progress)
    for photo in bar:
        bar.set_postfix_str(photo.name[-30:])
        try:
            out = flatten_photo(photo.read_bytes(), pipeline, options, limits, {})
        except TypedError as exc:
            run.failed[str(photo)] = f"{exc.code}: {exc.message}"
            bar.write(f"{photo}: {exc.code}: {exc.message}", file=sys.stderr)
            continue
        except OSError as exc:
            run.failed[str(photo)] = f"unreadable: {exc}"
            bar.write(f"{photo}: unreadable: {exc}", file=sys.stderr)
            continue
        if out_file is not None:
            target = out_file
        else:
            target, n = out_dir / f"{photo.stem}-flatlay.{ext}", 2
            while target in taken:  # the same stem from two folders
                target = out_dir / f"{photo.stem}-flatlay-{n}.{ext}"
                n += 1
        taken.add(target)
        files = _files_of(out, target, side_dir)
        _write_together(files)
        run.written.append(target)
        run.side_files += [p for p in files if p != target]
        run.compliance[str(target)] = out.compliance
    return run


def failed_checks(compliance: dict[str, Any]) -> str:
    """'size [1024, 1024] (required [2000, 2000]); …' for the checks that failed."""
    return "; ".join(f"{c['name']} {c['value']} (required {c['required']})"
                     for c in compliance["checks"] if not c["passed"])
