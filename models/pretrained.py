"""The local weights folder every small model here ships as: `config.json` (architecture,
its config, training record, metrics) beside `model.safetensors`. One writer and one reader,
so the format cannot drift between models; nothing is downloaded (`from_pretrained` always
takes a local folder)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn


def save_weights(folder: Path, net: nn.Module, meta: dict[str, Any]) -> None:
    """Write `meta` as config.json and the module's state as model.safetensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))


def read_meta(folder: Path, what: str, command: str) -> dict[str, Any]:
    """config.json of a weights folder; FileNotFoundError naming `what` is missing and the
    `command` that makes it."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no {what} (config.json missing); run "
                                f"`{command}`")
    return json.loads(path.read_text())


def load_weights(folder: Path, net: nn.Module) -> nn.Module:
    """The folder's model.safetensors into `net` (strict), on the CPU."""
    net.load_state_dict(load_file(str(Path(folder) / "model.safetensors"), device="cpu"))
    return net


def weights_fingerprint(folder: Path) -> str:
    """A short digest of the folder's model.safetensors: which weights, not just which name
    (a retrained model keeps its folder name)."""
    digest = hashlib.sha256((Path(folder) / "model.safetensors").read_bytes())
    return digest.hexdigest()[:16]
