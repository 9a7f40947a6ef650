"""What every training loop here shares: the learning-rate schedule, rendering in worker
processes, and checkpoints that a run resumes from."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tqdm import tqdm

from models.config import config_id

if TYPE_CHECKING:
    import torch


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


def warm_start_record(init: str, training: dict[str, Any]) -> dict[str, Any]:
    """What the weights a run starts from had done, from their `training` meta: the folder,
    its command, cumulative steps and minutes (weights from before cumulative counts: their
    own run's)."""
    return {"weights": init, "command": training.get("command", "?"),
            "cumulative_steps": training.get("cumulative_steps",
                                             training.get("config", {}).get("steps", 0)),
            "cumulative_minutes": training.get("cumulative_minutes", round(
                training.get("seconds_this_run", 0.0) / 60, 1))}


def seen_seeds_record(init: str, training: dict[str, Any], first_seed: int) -> dict[str, Any]:
    """Where a run starts, for trainers whose warm starts render past the seeds their weights
    learned from: `warm_start_record` of `init` (empty: from scratch, nothing done) and
    `seen_seeds`, one range from `first_seed`, each run continuing where the last stopped."""
    if not init:
        return {"cumulative_steps": 0, "cumulative_minutes": 0.0,
                "seen_seeds": [first_seed, first_seed]}
    return {**warm_start_record(init, training), "seen_seeds": training.get(
        "seen_seeds", training.get("train_seeds", [first_seed, first_seed]))}


def started_from_line(origin: dict[str, Any] | None) -> str:
    """A card's words on where its weights started (`warm_start_record`, or None)."""
    if not origin:
        return "Trained from scratch"
    return (f"Warm-started from `{origin['weights']}` (`{origin['command']}`, "
            f"{origin['cumulative_steps']} steps before this run) and trained")


def changed_flags(cfg: TrainRun, *names: str) -> str:
    """The command-line flags of the config fields `names` whose values differ from their
    defaults, in that order: what a card's training command adds to its fixed part."""
    return "".join(f" --{name.replace('_', '-')} {getattr(cfg, name)}" for name in names
                   if getattr(cfg, name) != getattr(type(cfg), name))


def cumulative(before: dict[str, Any], steps: int, seconds: float) -> dict[str, Any]:
    """The card's cumulative steps and minutes after a run of `steps` in `seconds`."""
    return {"cumulative_steps": before["cumulative_steps"] + steps,
            "cumulative_minutes": round(before["cumulative_minutes"] + seconds / 60, 1)}


def cosine_lr(step: int, lr: float, warmup: int, steps: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _one_thread() -> None:
    """Each forked render process computes on one thread: there are as many processes as
    cores, and BLAS's own threads (numpy's matrix products in the warp and the fusion) would
    otherwise contend with the other process's and spin."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def render_pool(workers: int) -> Any:  # noqa: ANN401 (multiprocessing's Pool)
    """`workers` forked processes for making training data, one compute thread each."""
    return mp.get_context("fork").Pool(workers, initializer=_one_thread)


def render_map(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int, desc: str
               ) -> list[Any]:
    """[fn(j) for j in jobs], in order, in `workers` forked processes, with a progress bar."""
    if workers > 1:
        with render_pool(workers) as pool:
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


def load_states(state: dict[str, Any], parts: dict[str, Any]) -> None:
    """Restore each part (a module or an optimiser) from the checkpoint entry of its name."""
    for name, part in parts.items():
        part.load_state_dict(state[name])


def state_dicts(parts: dict[str, Any]) -> dict[str, Any]:
    """Each part's state under its name, for `save_checkpoint`."""
    return {name: part.state_dict() for name, part in parts.items()}


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


def numpy_rng(rng: Any) -> tuple[Callable[[], Any], Callable[[Any], None]]:  # noqa: ANN401
    """(get, set) of a numpy Generator's state, for `supervised_loop`'s checkpoints."""

    def set_state(state: Any) -> None:  # noqa: ANN401
        rng.bit_generator.state = state

    return (lambda: rng.bit_generator.state), set_state


def supervised_loop(cfg: TrainRun, model: torch.nn.Module, opt: torch.optim.Optimizer, *,
                    desc: str, steps: int, lr: float, warmup: int, eval_every: int,
                    batch_loss: Callable[[], tuple[torch.Tensor, dict[str, float]]],
                    evaluate: Callable[[], dict[str, Any]],
                    rng: tuple[Callable[[], Any], Callable[[Any], None]],
                    after_step: Callable[[], None] | None = None
                    ) -> tuple[list[dict[str, Any]], float]:
    """The loop the parser, StructureNet and pattern trainers share: resume from the run's
    checkpoint, cosine learning rate, one `batch_loss()` (loss, parts to show) per step,
    validation (`evaluate()`) every `eval_every` steps and at the end, a checkpoint every
    `ckpt_every`. `rng`: (get, set) of the random state the batches are drawn from, kept in
    the checkpoint. Returns the validation history and the run's training seconds, summed
    over every resume (the checkpoint keeps them: a card's minutes are the run's, not the
    last resume's)."""
    run = Path(cfg.run_dir)
    step, history, before = 0, [], 0.0
    state = load_checkpoint(run, cfg.device)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        rng[1](state["rng"])
        step, history = state["step"], state["history"]
        before = state.get("seconds", 0.0)  # older checkpoints did not keep them
    started = time.time()
    model.train()
    bar = tqdm(total=steps, initial=step, desc=desc)
    while step < steps:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, lr, warmup, steps)
        loss, parts = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        step += 1
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
        if step % eval_every == 0 or step == steps:
            record_eval(run, history, {"step": step, "loss": round(loss.item(), 4),
                                       **evaluate()})
        if step % cfg.ckpt_every == 0 or step == steps:
            save_checkpoint(run, {"model": model.state_dict(), "opt": opt.state_dict(),
                                  "rng": rng[0](), "step": step, "history": history,
                                  "seconds": before + time.time() - started})
    bar.close()
    return history, round(before + time.time() - started, 1)


def cached_shards(folder: Path, jobs: Sequence[Any], fn: Callable[[Any], dict | None],
                  fields: Sequence[str], workers: int, desc: str, shard: int = 250
                  ) -> dict[str, Any]:
    """[fn(j) for j in jobs] (rows of `fields`, None rows dropped) stacked per field, made
    in `workers` forked processes and cached under `folder` in shards of `shard` jobs: a
    shard on disk is not made again, so an interrupted cache resumes where it stopped."""
    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards = [(i, min(i + shard, len(jobs))) for i in range(0, len(jobs), shard)]
    todo = [(a, b) for a, b in shards if not (folder / f"{a:06d}.npz").is_file()]
    if todo:
        bar = tqdm(total=sum(b - a for a, b in todo), desc=desc, unit="photo")
        with render_pool(workers) as pool:
            for a, b in todo:
                rows = []
                for row in pool.imap(fn, jobs[a:b], chunksize=8):
                    bar.update(1)
                    if row is not None:
                        rows.append(row)
                arrays = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in fields}
                tmp = folder / f"{a:06d}.tmp.npz"
                np.savez(tmp, **arrays)
                tmp.replace(folder / f"{a:06d}.npz")
        bar.close()
    parts = []
    for a, _ in shards:
        with np.load(folder / f"{a:06d}.npz") as z:
            parts.append({k: z[k] for k in fields})
    return {k: np.concatenate([p[k] for p in parts]) for k in fields}


def served_photo(seed: int, photo_size: int, family: str | None = None,
                 coords: bool = False) -> tuple[Any, Any]:
    """A garment-world seed's sample (with `coords`, its true correspondence) and its photo
    as the service receives it: the decoded JPEG (the rendered image where the sample has
    none)."""
    from models.garments import generate
    from models.io import decode_image

    s = generate(int(seed), size=photo_size, family=family, coords=coords)
    return s, decode_image(s.wild_jpeg) if s.wild_jpeg else s.wild_image


@functools.cache
def served_aligner(refine_silhouette: bool = True, register_photo: bool = True
                   ) -> Any:  # noqa: ANN401
    """The shipped stages 1–5 (`StructureAligner`), loaded once per process and on one
    thread: training data is made in as many worker processes as there are cores."""
    import torch

    from models.pipelines.stages import StructureAligner

    torch.set_num_threads(1)
    aligner = StructureAligner(refine_silhouette=refine_silhouette,
                               register_photo=register_photo)
    aligner.load()
    return aligner


def served_alignment(aligner: Any, seed: int, photo_size: int,  # noqa: ANN401
                     family: str | None = None, coords: bool = False) -> tuple[Any, Any, Any]:
    """A garment-world seed's sample, its photo as the service receives it (the decoded
    JPEG) and stages 1–5 on it as served — the warp at the photo's size, as the service
    warps at 1024² — or None in place of the alignment where the stages refuse the photo.
    coords: the sample carries its true correspondence (`wild_flat_coords`)."""
    from models.pipeline import PipelineError, StageClock
    from models.pipelines.flatten import FlattenPipeline

    s, photo = served_photo(seed, photo_size, family, coords)
    try:
        coarse = aligner.align(photo, None, photo_size, StageClock(FlattenPipeline.stages, None))
    except PipelineError:
        coarse = None
    return s, photo, coarse


def export_refusal(metric: str, score: float, rivals: dict[str, float],
                   lower_is_better: bool = False) -> str | None:
    """None where a trained model's validation `metric` beats every rival's (what serves
    today: the untrained stage, the shipped weights), else the line that says which one it
    does not beat."""
    sign = -1 if lower_is_better else 1
    best = max(rivals, key=lambda k: sign * rivals[k])
    if sign * score > sign * rivals[best]:
        return None
    return f"not exported: validation {metric} {score} does not beat {best}'s {rivals[best]}"


def machine_line(device: str) -> str:
    """A card's words on what trained it."""
    import platform

    import torch

    return f"{platform.machine()}, torch {torch.__version__}, {device}"


def per_set_means(prefix: str, values: dict[str, Any], right: dict[str, Any]
                  ) -> dict[str, float]:
    """Per set of photos, the mean of a per-photo metric (`PREFIX_SET`) and its mean where
    the category was right (`PREFIX_SET_right`; `right` holds each set's bool mask)."""
    out = {}
    for name, v in values.items():
        out[f"{prefix}_{name}"] = round(float(v.mean()), 4)
        out[f"{prefix}_{name}_right"] = round(float(v[right[name]].mean()), 4)
    return out


def warm_start(pretrained: Callable[[Path], Any], init: str, first_seed: int
               ) -> tuple[Any, dict[str, Any]]:
    """A warm start's weights (`pretrained(folder)`: a stage's `from_pretrained`, something
    with `net` and `meta`) and what they had done (`seen_seeds_record`): the run renders on
    from where they stopped."""
    start = pretrained(Path(init))
    return start.net, seen_seeds_record(init, start.meta.get("training", {}), first_seed)


def stage_views(run: Path, name: str, start: int, n: int, family: str, photo_size: int,
                workers: int, example: Callable[[Any], dict | None], fields: Sequence[str],
                stamp: str) -> dict[str, Any]:
    """n photos from seed `start` through stages 1–5 as served (`example((seed, photo_size,
    family))` for each), cached under run/views/ in a folder named by the set and `stamp`,
    the stages' (`stages_stamp`)."""
    jobs = [(seed, photo_size, family) for seed in range(start, start + n)]
    folder = run / "views" / f"{name}-{start}-{n}-{family}-{photo_size}-{stamp}"
    return cached_shards(folder, jobs, example, fields, workers, f"stages 1–5 {name} {family}")


def seen_seeds_training(cfg: Any, family: str, model: dict[str, Any],  # noqa: ANN401
                        before: dict[str, Any], train_start: int, val_start: int,
                        examples: int, seconds: float) -> dict[str, Any]:
    """The `training` meta of a stage-5 net trained `cfg.steps` on `cfg.n_train` photos past
    the seeds its warm start saw (`before`, `seen_seeds_record`): the command that repeats
    it, the seeds, and the cumulative steps and minutes."""
    from dataclasses import asdict

    from models.config import config_path

    return {
        "command": f"flatlay train {family} --config "
                   f"{cfg.config.removeprefix(family + '-')} --steps {cfg.steps} "
                   f"--n-train {cfg.n_train}" + changed_flags(cfg, "init", "lr"),
        "config": {**asdict(cfg), "model": model},
        "architecture_file": str(config_path(family, cfg.config)),
        "train_seeds": [train_start, train_start + cfg.n_train],
        "seen_seeds": [before["seen_seeds"][0], train_start + cfg.n_train],
        "val_seeds": [val_start, val_start + cfg.n_val],
        "examples": examples,
        "seconds_this_run": seconds,
        "machine": machine_line(cfg.device),
        "started_from": before if cfg.init else None,
        **cumulative(before, cfg.steps, seconds),
    }


def stages_stamp(*, decided: bool = True, refined: bool = False,
                 registered: bool = False) -> str:
    """A short digest of the weights and the bank that stages 1–4 load (parser, category
    head, StructureNet, the default bank; with `decided` the category decision, without it
    only the evidence the decision weighs) and, with `refined` and `registered`, stage 5's
    silhouette refiner and registration: data made behind other ones is another data set, so
    a cache folder carries it (a change of the stages' code needs the cache deleted)."""
    from models.decision import DECISION_WEIGHTS
    from models.parser import PARSER_WEIGHTS
    from models.pattern import CATEGORY_WEIGHTS
    from models.registration import REGISTRATION_WEIGHTS
    from models.silhouette import SILHOUETTE_WEIGHTS
    from models.structurenet import DEFAULT_WEIGHTS
    from structure_bank.builder import default_bank_path

    digest = hashlib.sha256()
    folders = ([PARSER_WEIGHTS, CATEGORY_WEIGHTS, DEFAULT_WEIGHTS]
               + [DECISION_WEIGHTS] * decided + [SILHOUETTE_WEIGHTS] * refined
               + [REGISTRATION_WEIGHTS] * registered)
    for folder in folders:
        weights = Path(folder) / "model.safetensors"
        digest.update(weights.read_bytes() if weights.is_file() else b"none")
    for path in sorted(Path(default_bank_path()).rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]
