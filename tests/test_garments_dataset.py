"""Garment data sets on disk: manifest round trip, worker independence, the `synth` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import cli
from models.garments import generate
from models.garments.dataset import load_manifest, read_sample, write_dataset

ROOT = Path(__file__).resolve().parents[1]
ARRAYS = ("flat_image", "flat_mask", "flat_landmarks", "wild_image", "wild_mask",
          "wild_occluder_mask", "wild_landmarks", "wild_visibility")


def test_manifest_round_trip(tmp_path):
    header = write_dataset(tmp_path / "ds", n=5, seed=1_000_010, size=96, shard_size=2)
    assert header["n"] == 5 and header["size"] == 96
    head, records = load_manifest(tmp_path / "ds")
    assert head == header
    assert [r["seed"] for r in records] == list(range(1_000_010, 1_000_015))
    assert {r["split"] for r in records} == {"val"}
    assert len({r["files"]["wild_image"].split("/")[0] for r in records}) == 3  # shards of 2
    for r in records:
        back = read_sample(tmp_path / "ds", r)
        fresh = generate(r["seed"], size=96)
        for name in ARRAYS:
            a, b = getattr(back, name), getattr(fresh, name)
            assert a.dtype == b.dtype and np.array_equal(a, b), name
        assert back.wild_jpeg == fresh.wild_jpeg  # the photo's own JPEG file, not re-encoded
        assert back.attributes == json.loads(json.dumps(fresh.attributes))
        assert back.category == fresh.category and back.family == fresh.family
        assert len(r["flat_landmarks"]) == len(head["landmark_names"][r["category"]])


def test_worker_count_does_not_change_the_data(tmp_path):
    write_dataset(tmp_path / "one", n=6, seed=20, size=64, workers=1)
    write_dataset(tmp_path / "two", n=6, seed=20, size=64, workers=2)
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.*"))
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.*"))
    assert one == two
    for rel in one:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel


def test_synth_command_writes_a_data_set_and_a_contact_sheet(tmp_path, capsys):
    out = tmp_path / "synth"
    assert cli.main(["synth", "--n", "3", "--seed", "5", "--size", "64", "--out", str(out),
                     "--quiet"]) == 0
    header, records = load_manifest(out)
    assert header["seed_start"] == 5 and len(records) == 3
    assert cli.main(["synth", "--n", "2", "--split", "test", "--size", "64", "--out", str(out),
                     "--overwrite", "--quiet"]) == 0
    _, records = load_manifest(out)
    assert [r["split"] for r in records] == ["test", "test"]
    sheet = tmp_path / "sheet.png"
    assert cli.main(["synth", "--contact-sheet", str(sheet), "--n", "4", "--size", "64"]) == 0
    with Image.open(sheet) as img:
        assert img.width > 4 * 64 and img.height > 64


def test_synth_bad_input_is_a_clear_error_with_status_2(tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    afile = tmp_path / "file"
    afile.write_text("x")
    cases = [
        (["--n", "0", "--out", str(tmp_path / "a")], "--n must be"),
        (["--n", "3", "--size", "10", "--out", str(tmp_path / "a")], "--size must be"),
        (["--n", "3", "--out", str(busy)], "not empty"),
        (["--n", "3", "--out", str(afile)], "not a directory"),
        (["--n", "3", "--workers", "0", "--out", str(tmp_path / "a")], "--workers"),
        (["--out", str(tmp_path / "a")], "needs --n"),
        ([], "nothing to do"),
        (["--contact-sheet", str(tmp_path / "s.gif")], ".png"),
        (["--n", "200000", "--split", "val", "--out", str(tmp_path / "a")], "runs past"),
    ]
    for args, message in cases:
        assert cli.main(["synth", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
    assert (busy / "keep.txt").read_text() == "mine"
    proc = subprocess.run([sys.executable, "-m", "cli", "synth", "--n", "-4", "--out",
                           str(tmp_path / "b")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--n must be" in proc.stderr and "Traceback" not in proc.stderr
