"""`flatlay generate` with presets, structures and side outputs: the worker's code on local
files, no service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli import main
from models.garments import generate as garment
from tests.support import encode, garment_photo

SKIRT = garment(1_150_000, size=128, category="skirt").flat_landmarks


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "shirt.jpg"
    path.write_bytes(encode(garment_photo(320, 240)[0], "JPEG"))
    return path


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_one_photo_to_a_named_file_with_its_side_outputs(
    tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out" / "front.jpg"
    assert main(["generate", str(photo), "-o", str(out), "--preset", "amazon-main",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"1 flat-lay(s) in {out}" in printed and "amazon-main compliance" in printed
    image = Image.open(out)
    assert image.format == "JPEG" and image.size == (2000, 2000)  # the preset's defaults
    mask = Image.open(tmp_path / "out" / "front.mask.png")
    assert mask.mode == "L" and mask.size == (2000, 2000)
    assert Image.open(tmp_path / "out" / "front.overlay.png").size == (2000, 2000)
    compliance = json.loads((tmp_path / "out" / "front.compliance.json").read_text())
    checks = {c["name"]: c for c in compliance["checks"]}
    assert compliance["preset"] == "amazon-main"
    assert checks["size"]["passed"] and checks["format"]["passed"]
    assert checks["fill_ratio"]["passed"]


def test_a_folder_with_a_progress_bar_side_outputs_elsewhere_and_a_failing_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "in"
    (photos / "more").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(encode(garment_photo(320, 240)[0], "JPEG"))
    (photos / "more" / "b.png").write_bytes(encode(garment_photo(300, 240)[0], "PNG"))
    out, side = tmp_path / "out", tmp_path / "side"
    # A size amazon-main does not allow: made, and its check says it fails.
    assert main(["generate", str(photos), "-o", str(out), "--preset", "amazon-main",
                 "--size", "512", "--format", "png", "--side-outputs", str(side)]) == 0
    captured = capsys.readouterr()
    assert "2/2" in captured.err  # the progress bar
    assert "0 passed, 2 failed" in captured.out and "size [512, 512]" in captured.out
    assert _tree(out) == ["a-flatlay.png", "b-flatlay.png"]
    names = _tree(side)
    assert {"a-flatlay.mask.png", "a-flatlay.overlay.png", "a-flatlay.compliance.json",
            "b-flatlay.mask.png", "b-flatlay.compliance.json"} <= set(names)
    check = json.loads((side / "b-flatlay.compliance.json").read_text())
    assert check["passed"] is False
    assert Image.open(side / "a-flatlay.mask.png").size == (512, 512)


def test_a_structure_file_is_taken(tmp_path: Path, photo: Path) -> None:
    structure = tmp_path / "skirt.json"
    structure.write_text(json.dumps({"category": "skirt", "landmarks": SKIRT.tolist(),
                                     "names": ["extra keys of a landmarks output are fine"]}))
    out = tmp_path / "o"
    assert main(["generate", str(photo), "-o", str(out), "--structure", str(structure),
                 "--size", "256", "--quiet"]) == 0
    assert (out / "shirt-flatlay.png").is_file()


def _bad_structure(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.json"
    lm = SKIRT.astype(np.float64)
    if kind == "outside":
        lm[3] = (1.2, 0.5)
    elif kind == "cross":
        lm[[1, 2]] = lm[[2, 1]]
    elif kind == "count":
        lm = lm[:-1]
    text = json.dumps({"category": "skirt", "landmarks": np.asarray(lm).tolist()})
    path.write_text(text[:20] if kind == "json" else text)
    return path


@pytest.mark.parametrize(
    "args,message",
    [
        (["--preset", "etsy"], "--preset: unknown preset 'etsy'; available: square-white"),
        (["--structure", "{tmp}/none.json"], "--structure: cannot read"),
        (["--structure", "{json}"], "is not valid JSON"),
        (["--structure", "{outside}"], "landmarks[3]: landmark 3 (1.2, 0.5) is outside"),
        (["--structure", "{cross}"], "the outline crosses itself"),
        (["--structure", "{count}"], "landmarks: a skirt has"),
        (["-o", "{tmp}/o/x.png", "--format", "jpeg"], "--format jpeg does not match"),
        (["--size", "4096"], "--size must be within 256–2048"),
        (["--preset", "transparent", "--format", "jpeg"], "JPEG has no alpha channel"),
        (["--hint", "x" * 201], "--hint: the hint is longer than 200 characters"),
    ],
    ids=["preset", "missing-structure", "json", "outside", "cross", "count", "suffix",
         "size", "jpeg-transparent", "hint"],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str], args: list[str],
    message: str,
) -> None:
    fill = {"tmp": str(tmp_path), **{k: str(_bad_structure(tmp_path, k))
                                    for k in ("json", "outside", "cross", "count")}}
    args = [a.format(**fill) for a in args]
    before = _tree(tmp_path)
    out = ["-o", str(tmp_path / "o")] if "-o" not in args else []
    assert main(["generate", str(photo), *out, *args]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("flatlay generate: error: ") and err.count("\n") == 1
    assert _tree(tmp_path) == before and not (tmp_path / "o").exists()


def test_a_file_output_needs_one_photo(
    tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", str(tmp_path), "-o", str(tmp_path / "one.png")]) == 2
    assert "give -o a folder" in capsys.readouterr().err
