"""What every training loop here shares: the learning-rate schedule, rendering in worker
processes, and checkpoints that a run resumes from."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tqdm import tqdm

from models.config import config_id


def default_device() -> str:
    import torch  # lazily: the CLI checks settings without loading torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TrainRun:
    """What every `flatlay train` run is named by: its model family's config (`models.config`:
    `NAME` or `FAMILY-NAME`, kept as the latter), where its weights go (default
    models/weights/CONFIG) and its cache and checkpoints (default runs/CONFIG)."""

    FAMILY: ClassVar[str] = ""
    config: str = "tiny"
    out: str = ""
    run_dir: str = ""
    seed: int = 0
    workers: int = 2
    ckpt_every: int = 100
    device: str = field(default_factory=default_device)

    def __post_init__(self) -> None:
        self.config = config_id(self.FAMILY, self.config)
        self.out = self.out or f"models/weights/{self.config}"
        self.run_dir = self.run_dir or f"runs/{self.config}"


def cosine_lr(step: int, lr: float, warmup: int, steps: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def render_map(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int, desc: str
               ) -> list[Any]:
    """[fn(j) for j in jobs], in order, in `workers` forked processes, with a progress bar."""
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            return list(tqdm(pool.imap(fn, jobs, chunksize=16), total=len(jobs), desc=desc))
    return [fn(j) for j in tqdm(jobs, desc=desc)]


def load_checkpoint(run: Path, device: str) -> dict[str, Any] | None:
    """The run's checkpoint, or None when it has none yet."""
    import torch  # lazily: rendering (render_map) needs no torch

    ckpt = Path(run) / "checkpoint.pt"
    if not ckpt.is_file():
        return None
    state = torch.load(ckpt, map_location=device, weights_only=False)
    print(f"resumed from {ckpt} at step {state['step']}")
    return state


def save_checkpoint(run: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint atomically (a kill mid-write leaves the previous one)."""
    import torch

    tmp = Path(run) / "checkpoint.tmp"
    torch.save(state, tmp)
    tmp.replace(Path(run) / "checkpoint.pt")


def record_eval(run: Path, history: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """Keep a validation result: in the run's history, on the console, in metrics.jsonl."""
    history.append(metrics)
    tqdm.write(json.dumps(metrics))
    with (Path(run) / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps(metrics) + "\n")
