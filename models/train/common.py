"""What every training loop here shares: the learning-rate schedule, rendering in worker
processes, and checkpoints that a run resumes from."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm


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
