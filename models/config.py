"""One convention for every model's config, open_clip's: named JSON files beside the code.

    models/configs/FAMILY-NAME.json        the architecture (what builds and runs the model)
    models/configs/train/FAMILY-NAME.json  the training settings of that architecture

`model_config` and `train_config` are the only readers; `flatlay train parser|structurenet|
vae|generator --config NAME` takes NAME or FAMILY-NAME. Torch-free, so the CLI can list and
check configs without loading a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TRAIN_CONFIG_DIR = CONFIG_DIR / "train"
FAMILIES = ("parser", "structurenet", "generator", "pattern", "closure", "category",
            "illuminant", "hints", "silhouette", "decision", "registration")


def config_names(family: str) -> list[str]:
    """The short names (`tiny`, `base`, …) of the family's architecture configs."""
    _check_family(family)
    return sorted(p.stem.removeprefix(f"{family}-") for p in CONFIG_DIR.glob(f"{family}-*.json"))


def config_id(family: str, name: str) -> str:
    """`FAMILY-NAME` for `NAME` or `FAMILY-NAME`; ValueError naming the known ones otherwise."""
    short = name.removeprefix(f"{family}-")
    if short not in config_names(family):
        raise ValueError(f"unknown {family} config {name!r}; available: "
                         f"{', '.join(config_names(family))}")
    return f"{family}-{short}"


def config_path(family: str, name: str, *, train: bool = False) -> Path:
    """The architecture (or training) file, relative to the repository root, as model cards
    cite it."""
    folder = TRAIN_CONFIG_DIR if train else CONFIG_DIR
    return (folder / f"{config_id(family, name)}.json").relative_to(CONFIG_DIR.parent.parent)


def model_config(family: str, name: str) -> dict[str, Any]:
    """The architecture config `models/configs/FAMILY-NAME.json` (a fresh copy)."""
    return json.loads((CONFIG_DIR / f"{config_id(family, name)}.json").read_text())


def train_config(family: str, name: str) -> dict[str, Any]:
    """The training settings `models/configs/train/FAMILY-NAME.json` (a fresh copy; empty
    where an architecture has none of its own: its trainer's defaults apply)."""
    path = CONFIG_DIR.parent.parent / config_path(family, name, train=True)
    return json.loads(path.read_text()) if path.is_file() else {}


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; one of {', '.join(FAMILIES)}")
