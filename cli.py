"""The `flatlay` command: a thin front door.

Each subcommand imports its wing (service, workers, models) only when it runs, so
`flatlay serve` never pays for torch and `flatlay synth` never pays for FastAPI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.runner import serve

    return serve(host=args.host, port=args.port, data_dir=args.data_dir, worker=not args.no_worker)


def _cmd_api(args: argparse.Namespace) -> int:
    from service.runner import serve

    return serve(host=args.host, port=args.port, data_dir=args.data_dir, worker=False)


def _cmd_worker(args: argparse.Namespace) -> int:
    from workers.runner import WorkerStartError, run_worker

    try:
        return run_worker(data_dir=args.data_dir, concurrency=args.concurrency, queues=args.queues)
    except WorkerStartError as exc:
        raise CLIError(str(exc)) from None


def _cmd_migrate(args: argparse.Namespace) -> int:
    from service.settings import get_settings
    from service.store import migrate

    settings = get_settings(data_dir=args.data_dir)
    migrate(settings.resolved_database_url)
    print(f"job store at head: {settings.redacted_database_url}")
    return 0


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where jobs, blobs and the embedded queue live (default: $FLATLAY_DATA_DIR or "
        "./flatlay-data)",
    )


def _add_service_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the API and a worker process (embedded default)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--no-worker", action="store_true", help="start the API alone")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("api", help="run the API alone (distributed mode)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    _add_data_dir(p)
    p.set_defaults(func=_cmd_api)

    p = sub.add_parser("worker", help="run a Celery worker alone (distributed mode)")
    p.add_argument("--concurrency", type=int, default=1, help="jobs at once (one per device)")
    p.add_argument("--queues", default=None,
                   help="comma-separated queues (default: the GPU and the CPU queue)")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("migrate", help="bring the job store schema to the newest migration")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_migrate)


def _train_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings, one way for every model: the named config's training file
    (`models/configs/train/`), then what the command line gives, checked once here."""
    import torch

    from models.config import config_id, train_config

    family = TRAINERS[args.model].family
    try:
        name = config_id(family, args.config)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    given = {k: getattr(args, k, None) for k in
             ("steps", "n_train", "minutes", "device", "out", "run_dir", "vae_out",
              "generator", "init", "zoom_share", "lr")}
    for key in ("steps", "n_train"):
        if given[key] is not None and given[key] < 1:
            raise CLIError(f"--{key.replace('_', '-')} must be at least 1")
    for key in ("minutes", "lr"):
        if given[key] is not None and not given[key] > 0:
            raise CLIError(f"--{key} must be above 0")
    if given["init"] is not None and not (given["init"] / "config.json").is_file():
        raise CLIError(f"--init {given['init']}: no weights there (config.json missing)")
    if given["zoom_share"] is not None and not 0 <= given["zoom_share"] <= 1:
        raise CLIError(f"--zoom-share must be in [0, 1], got {given['zoom_share']}")
    device = given["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: no CUDA device on this machine")
    given["device"] = device
    overrides = {k: str(v) if isinstance(v, Path) else v for k, v in given.items()
                 if v is not None}
    if family == "generator":  # its training file is nested (vae, generator, pairs)
        return {"config": name, **overrides}
    return {"config": name, **train_config(family, name), **overrides}


class Trainer(NamedTuple):
    """One `flatlay train MODEL`: the config family it reads (vae and generator share one),
    where its loop lives (imported lazily), and its help line."""

    family: str
    module: str
    config_class: str
    function: str
    help: str


TRAINERS = {
    "parser": Trainer("parser", "models.train.parser", "ParserTrainConfig", "train_parser",
                      "the garment parser (mask, category, landmarks)"),
    "structurenet": Trainer("structurenet", "models.train.structurenet", "TrainConfig", "train",
                            "the dual-tower retrieval model"),
    "vae": Trainer("generator", "models.train.vae_decoder", "GeneratorTrainConfig",
                   "train_latent_space",
                   "the latent space: AutoencoderKL and its photo-aligned decoder (once a "
                   "generator ships: fine-tunes the decoder, keeps the encoder)"),
    "generator": Trainer("generator", "models.train.generator", "GeneratorTrainConfig",
                         "train_generator", "the diffusion pass's denoiser (after `train vae`)"),
    "pattern": Trainer("pattern", "models.train.pattern", "PatternTrainConfig", "train_pattern",
                       "the pattern head (the `pattern` attribute)"),
    "closure": Trainer("closure", "models.train.pattern", "ClosureTrainConfig", "train_pattern",
                       "the closure head (the `closure` attribute)"),
    "category": Trainer("category", "models.train.pattern", "CategoryTrainConfig",
                        "train_pattern", "the category head (stage 1's third look)"),
    "illuminant": Trainer("illuminant", "models.train.illuminant", "IlluminantTrainConfig",
                          "train_illuminant",
                          "the illuminant estimator (the generator's colour constancy)"),
    "hints": Trainer("hints", "models.train.hints", "HintsTrainConfig", "train_hints",
                     "the text tower for hints (after structurenet and the bank)"),
    "silhouette": Trainer("silhouette", "models.train.silhouette", "SilhouetteTrainConfig",
                          "train_silhouette",
                          "stage 5's silhouette refiner (after parser, structurenet, bank)"),
    "registration": Trainer("registration", "models.train.registration",
                            "RegistrationTrainConfig", "train_registration",
                            "stage 5's registration of the photo (after the silhouette refiner)"),
    "decision": Trainer("decision", "models.train.decision", "DecisionTrainConfig",
                        "train_decision",
                        "stage 3's category decision (after parser, structurenet, bank)"),
}


def _cmd_train(args: argparse.Namespace) -> int:
    import importlib

    settings = _train_settings(args)
    spec = TRAINERS[args.model]
    trainer = importlib.import_module(spec.module)
    cfg, out = getattr(trainer, spec.config_class)(**settings), getattr(trainer, spec.function)
    try:
        metrics = out(cfg)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    # Neutral wording: with --minutes the generator and the VAE export only an improvement,
    # and say so themselves in the line above.
    where = cfg.vae_out if args.model == "vae" else cfg.out
    print(f"{args.model} ({where}), last validation: {metrics}")
    return 0


def _load_bank(path: Path | None):  # noqa: ANN202 (structure_bank imported lazily)
    from structure_bank import StructureBank
    from structure_bank.builder import default_bank_path

    path = Path(path or default_bank_path())
    try:
        return path, StructureBank.load(path)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _cmd_bank_build(args: argparse.Namespace) -> int:
    from models.bank_builder import build_bank
    from structure_bank.builder import default_bank_path

    if args.n < 1:
        raise CLIError(f"--n must be at least 1, got {args.n}")
    out = Path(args.out or default_bank_path())
    if out.exists() and not args.overwrite:
        raise CLIError(f"{out} exists; pass --overwrite to replace it")
    _, model = _weights(args.weights)
    bank = build_bank(args.n, model, workers=args.workers)
    bank.save(out)
    print(f"wrote {out}: {len(bank)} entries {bank.category_counts()}")
    return 0


def _cmd_bank_add(args: argparse.Namespace) -> int:
    from models.bank_builder import world_structures
    from models.garments import CATEGORIES
    from models.structurenet import embedded_by

    path, bank = _load_bank(args.bank)
    if args.category not in CATEGORIES:
        raise CLIError(f"unknown category {args.category!r}; available: {', '.join(CATEGORIES)}")
    if args.n < 1 or args.seed < 0:
        raise CLIError("--n must be at least 1 and --seed non-negative")
    folder, model = _weights(args.weights)
    if bank.model.get("fingerprint") and not embedded_by(bank, model):
        raise CLIError(f"{path} was embedded by other StructureNet weights than {folder}; "
                       f"`flatlay bank reembed --bank {path} --weights {folder}` first; "
                       "nothing was added")
    structures = world_structures(list(range(args.seed, args.seed + args.n)), model,
                                  category=args.category, workers=args.workers,
                                  id_prefix=args.id_prefix)
    try:
        bank.add(structures)
    except ValueError as exc:
        raise CLIError(f"{exc}; nothing was added") from None
    bank.save(path)
    print(f"added {len(structures)} {args.category} structures to {path}: {len(bank)} entries")
    return 0


def _weights(folder: Path | None):  # noqa: ANN202 (torch models are imported lazily)
    from models.structurenet import DEFAULT_WEIGHTS, StructureNet

    folder = Path(folder or DEFAULT_WEIGHTS)
    try:
        return folder, StructureNet.from_pretrained(folder)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None


def _cmd_bank_reembed(args: argparse.Namespace) -> int:
    from models.structurenet import embedded_by, reembed_bank

    path, bank = _load_bank(args.bank)
    folder, model = _weights(args.weights)
    if embedded_by(bank, model):
        print(f"{path}: already embedded by {folder} ({model.fingerprint}); nothing to do")
        return 0
    bank = reembed_bank(bank, model)
    bank.save(path)
    print(f"{path}: {len(bank)} structures embedded again by {folder} ({model.fingerprint})")
    return 0


def _cmd_bank_info(args: argparse.Namespace) -> int:
    import json

    path, bank = _load_bank(args.bank)
    print(json.dumps({"path": str(path), "entries": len(bank),
                      "embedding_dim": bank.embedding_dim,
                      "silhouette_size": bank.silhouette_size, "model": bank.model,
                      "categories": bank.category_counts()}, indent=2))
    return 0


def _write_result(name: str, result: dict, table: list[tuple[str, object]]) -> None:
    import json

    results = Path("bench/results")
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# {name}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in table]
    (results / f"{name}.md").write_text("\n".join(lines) + "\n")


def _cmd_bench_retrieval(args: argparse.Namespace) -> int:
    import json

    from models.eval.retrieval import benchmark_retrieval

    if args.split not in ("val", "test"):
        raise CLIError("--split must be val or test")
    if not 1 <= args.n <= 100_000:
        raise CLIError("--n must be in 1..100000")
    result = benchmark_retrieval(split=args.split, n=args.n, k=args.k, weights=args.weights,
                                 bank_path=args.bank)
    flat = [(k, v) for k, v in result.items() if not isinstance(v, dict)]
    flat += [(f"{view}.{k}", v) for view in ("whole_photo", "with_garment_box")
             for k, v in result[view].items()]
    flat += [(f"zero_shot.{k}", v) for k, v in result["zero_shot"].items()]
    _write_result(f"retrieval-{args.split}", result, flat)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _cmd_bench_parser(args: argparse.Namespace) -> int:
    import json

    from models.eval.parser import benchmark_parser

    if not 1 <= args.n <= 100_000:
        raise CLIError("--n must be in 1..100000")
    if not 64 <= args.size <= 2048:
        raise CLIError("--size must be in 64..2048")
    result = benchmark_parser(split=args.split, n=args.n, size=args.size, weights=args.weights)
    _write_result(f"parser-{args.split}", result, list(result.items()))
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _cmd_bench_retrieval_scale(args: argparse.Namespace) -> int:
    import json

    from models.eval.retrieval_scale import benchmark_scale

    _, bank = _load_bank(args.bank)
    sizes = tuple(int(x) for x in args.sizes.split(","))
    result = benchmark_scale(bank.embeddings, sizes=sizes, queries=args.queries)
    rows = [(f"{r['entries']} entries", r) for r in result["sizes"]]
    _write_result("retrieval-scale", result, rows)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _report_split(args: argparse.Namespace) -> str:
    """The split a benchmark command names (`--split`, or `--heldout`)."""
    split = args.split or ("heldout" if args.heldout else "test")
    if args.heldout and split != "heldout":
        raise CLIError(f"--heldout contradicts --split {split}")
    return split


def _print_report(result: dict, paths: dict, format_table, as_json: bool) -> None:  # noqa: ANN001
    import json

    if as_json:
        print(json.dumps({k: v for k, v in result.items() if k != "assets"}))
    else:
        print(format_table(result))
        print("wrote " + ", ".join(str(p) for p in paths.values()))


def _cmd_bench_attributes(args: argparse.Namespace) -> int:
    from models.eval.attributes import benchmark_attributes, format_table, write_report

    try:
        result = benchmark_attributes(split=_report_split(args), n=args.n,
                                      pipeline=args.pipeline or _default_pipeline(),
                                      size=args.size)
    except (KeyError, ValueError) as exc:  # KeyError: an unknown pipeline
        raise CLIError(str(exc).strip("'\"")) from None
    _print_report(result, write_report(result, args.out_dir), format_table, args.json)
    return 0


def _read_json(path: Path, flag: str, what: str = "") -> Any:
    """The JSON file `flag` names (or implies), parsed; a one-line CLIError when it cannot be
    read or is not JSON."""
    import json

    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise CLIError(f"{flag}: cannot read {what}{path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise CLIError(f"{flag} {path} is not valid JSON: {exc}") from None


def _cmd_bench_quality(args: argparse.Namespace) -> int:
    from models.eval.quality import (
        PipelineLoadError,
        benchmark_quality,
        format_table,
        write_report,
    )

    wanted = None if args.pipelines is None else [
        p.strip() for p in args.pipelines.split(",") if p.strip()]
    if args.hints and args.update:
        raise CLIError("--update keeps rows of the quality table; --hints writes another one")
    if args.hints:
        from models.eval import hints

        if wanted is not None and len(wanted) != 1:
            raise CLIError("--hints runs one pipeline: give --pipelines NAME")
        try:
            result = hints.benchmark_hints(split=_report_split(args), n=args.n,
                                           pipeline=wanted[0] if wanted else "flatten",
                                           size=args.size)
        except (KeyError, ValueError) as exc:
            raise CLIError(str(exc).strip("'\"")) from None
        _print_report(result, hints.write_report(result, args.out_dir), hints.format_table,
                      args.json)
        return 0
    previous = None
    if args.update:
        if wanted is None:
            raise CLIError("--update re-runs the pipelines named by --pipelines and keeps the "
                           "others: name them")
        recorded = args.out_dir / f"quality-{_report_split(args)}.json"
        previous = _read_json(recorded, "--update", "the recorded result ")
        if not isinstance(previous, dict) or previous.get("benchmark") != "quality":
            raise CLIError(f"--update: {recorded} is not a quality result")
    try:
        result, grid = benchmark_quality(split=_report_split(args), n=args.n,
                                         pipelines=wanted, size=args.size,
                                         grid_rows=args.grid_rows, ceilings=args.ceilings,
                                         previous=previous)
    except (PipelineLoadError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    _print_report(result, write_report(result, grid, args.out_dir), format_table, args.json)
    return 0


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a model on the garment world")
    tsub = train.add_subparsers(dest="model", metavar="MODEL")
    tsub.required = True
    from models.config import config_names

    for name, spec in TRAINERS.items():
        p = tsub.add_parser(name, help=spec.help)
        configs = config_names(spec.family)
        p.add_argument("--config", default="tiny",
                       help=f"models/configs/{spec.family}-NAME.json: "
                       f"{', '.join(configs)} (default tiny, for the CPU)")
        p.add_argument("--steps", type=int, default=None, help="optimiser steps")
        if name in ("vae", "generator"):
            p.add_argument("--minutes", type=float, default=None,
                           help="train for this wall-clock budget instead of --steps (the "
                           "learning-rate schedule spans it); validates and exports on the way"
                           + (" (the decoder fine-tuning, once a generator ships)"
                              if name == "vae" else ""))
        p.add_argument("--n-train", type=int, default=None,
                       help="training pairs made through stages 1–5" if name in ("vae", "generator")
                       else "training seeds to render")
        if name in ("vae", "generator"):
            p.add_argument("--vae-out", type=Path, default=None,
                           help="latent-space weights folder")
        if name == "vae":
            p.add_argument("--generator", type=Path, default=None,
                           help="a generator folder (a run's candidate/) to fine-tune the "
                           "decoder for; it ships with the decoder if the pair beats the "
                           "shipped pair (default: the shipped generator)")
        if name in ("parser", "silhouette", "registration", "pattern", "closure", "category"):
            p.add_argument("--init", type=Path, default=None,
                           help="weights folder to start from (default: from scratch)"
                           + ("; the run renders photos past those it saw"
                              if name in ("silhouette", "registration") else ""))
            p.add_argument("--lr", type=float, default=None, help="peak learning rate")
        if name == "parser":
            p.add_argument("--zoom-share", type=float, default=None,
                           help="share of each batch that are second-look views, the garment's "
                           "box zoomed to the input (0–1, default 0)")
        p.add_argument("--out", type=Path, default=None, help="weights folder")
        p.add_argument("--run-dir", type=Path, default=None, help="cache and checkpoints")
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
        p.set_defaults(func=_cmd_train)

    bank = sub.add_parser("bank", help="the structure bank")
    bsub = bank.add_subparsers(dest="action", metavar="ACTION")
    bsub.required = True
    p = bsub.add_parser("build", help="build a bank from the garment world's train split")
    p.add_argument("--n", type=int, default=6000, help="entries")
    p.add_argument("--out", type=Path, default=None, help="bank folder (default: shipped bank)")
    p.add_argument("--weights", type=Path, default=None, help="StructureNet weights folder")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_bank_build)
    p = bsub.add_parser("add", help="add structures of a garment family, no retraining")
    p.add_argument("--category", required=True, help="garment category of the new structures")
    p.add_argument("--n", type=int, default=500, help="structures to add")
    p.add_argument("--seed", type=int, default=700_000, help="first garment-world seed")
    p.add_argument("--bank", type=Path, default=None, help="bank folder (default: shipped)")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--id-prefix", default="added", help="prefix of the new entry ids")
    p.set_defaults(func=_cmd_bank_add)
    p = bsub.add_parser("reembed", help="embed a bank's structures again with other "
                        "StructureNet weights (after retraining)")
    p.add_argument("--bank", type=Path, default=None, help="bank folder (default: shipped)")
    p.add_argument("--weights", type=Path, default=None, help="StructureNet weights folder")
    p.set_defaults(func=_cmd_bank_reembed)
    p = bsub.add_parser("info", help="size, model and categories of a bank")
    p.add_argument("--bank", type=Path, default=None)
    p.set_defaults(func=_cmd_bank_info)

    bench = sub.add_parser("bench", help="benchmarks; results under bench/results/")
    bnsub = bench.add_subparsers(dest="bench", metavar="BENCH")
    bnsub.required = True
    p = bnsub.add_parser("retrieval", help="StructureNet + bank + SLLE against ground truth")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--k", type=int, default=8, help="SLLE neighbours")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--bank", type=Path, default=None)
    p.add_argument("--json", action="store_true", help="one JSON object on one line")
    p.set_defaults(func=_cmd_bench_retrieval)
    p = bnsub.add_parser("retrieval-scale", help="search latency at 10k–1M entries")
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--bank", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench_retrieval_scale)
    p = bnsub.add_parser("quality", help="every pipeline's flat-lay against the true one")
    p.add_argument("--split", default=None, help="train, val, test (default) or heldout")
    p.add_argument("--heldout", action="store_true", help="the held-out split (shape families)")
    p.add_argument("--n", type=int, default=200, help="assets: the split's first n seeds")
    p.add_argument("--pipelines", default=None,
                   help="comma-separated pipeline names (default: every registered pipeline)")
    p.add_argument("--size", type=int, default=1024, help="photo and output canvas side, px")
    p.add_argument("--grid-rows", type=int, default=8, help="assets in the grid PNG (0: none)")
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"),
                   help="where quality-SPLIT.{json,md,png} go (default bench/results)")
    p.add_argument("--json", action="store_true",
                   help="print the summary as one JSON line instead of a table")
    p.add_argument("--ceilings", action="store_true",
                   help="add what flatten's silhouette could hold at best (oracle colour map; "
                   "the photo registered without error, with and without it; the truth at "
                   "64², 128², full)")
    p.add_argument("--hints", action="store_true",
                   help="text hints on the split's hard photos (occluded or cropped): no "
                   "hint, a correct one and a wrong one (one pipeline, default flatten)")
    p.add_argument("--update", action="store_true",
                   help="re-run only --pipelines and keep the other rows of the recorded "
                   "quality-SPLIT.json in --out-dir (checked to reproduce on the grid's assets)")
    p.set_defaults(func=_cmd_bench_quality)
    p = bnsub.add_parser("attributes",
                         help="catalog attributes of the flat-lays against the world's truth")
    p.add_argument("--split", default=None, help="train, val, test (default) or heldout")
    p.add_argument("--heldout", action="store_true", help="the held-out split (shape families)")
    p.add_argument("--n", type=int, default=200, help="assets: the split's first n seeds")
    p.add_argument("--pipeline", default=None, help="the pipeline (default: the service's, "
                   "FLATLAY_DEFAULT_PIPELINE)")
    p.add_argument("--size", type=int, default=1024, help="photo and output canvas side, px")
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"),
                   help="where attributes-SPLIT.{json,md} go (default bench/results)")
    p.add_argument("--json", action="store_true",
                   help="print the summary as one JSON line instead of a table")
    p.set_defaults(func=_cmd_bench_attributes)
    p = bnsub.add_parser("parser", help="learned parser vs ground truth and the classical mask")
    p.add_argument("--split", choices=["val", "test", "heldout"], default="test")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--size", type=int, default=512, help="photo side, px")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench_parser)


def _cmd_synth(args: argparse.Namespace) -> int:
    import os

    if args.out is None and args.contact_sheet is None:
        raise CLIError("nothing to do: give --out DIR (a data set) and/or --contact-sheet FILE.png")
    if not 64 <= args.size <= 1024:
        raise CLIError(f"--size must be between 64 and 1024 pixels, got {args.size}")
    if args.seed < 0:
        raise CLIError(f"--seed must be a non-negative integer, got {args.seed}")
    if not 1 <= args.workers <= 64:
        raise CLIError(f"--workers must be between 1 and 64, got {args.workers}")
    if args.n is not None and not 1 <= args.n <= 10_000_000:
        raise CLIError(f"--n must be between 1 and 10000000, got {args.n}")
    sheet = args.contact_sheet
    if sheet is not None:
        if sheet.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            raise CLIError(f"--contact-sheet must name a .png or .jpg file, got {sheet}")
        if not sheet.parent.resolve().is_dir():
            raise CLIError(f"--contact-sheet: folder {sheet.parent} does not exist")
    out = args.out
    if out is not None:
        if args.n is None:
            raise CLIError("--out needs --n, the number of samples to write")
        if out.exists() and not out.is_dir():
            raise CLIError(f"--out {out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not args.overwrite:
            raise CLIError(f"--out {out} is not empty; pass --overwrite to replace a data set")
        parent = out if out.is_dir() else next(p for p in out.resolve().parents if p.exists())
        if not os.access(parent, os.W_OK | os.X_OK):
            raise CLIError(f"--out {out}: {parent} is not writable")

    from models import garments
    from models.garments.contact_sheet import write_contact_sheet

    seed = args.seed
    if args.split is not None:
        start, stop = garments.SPLITS[args.split]
        seed = start + args.seed
        if seed + (args.n or 1) > stop:
            raise CLIError(f"--split {args.split} holds {stop - start} seeds; --seed {args.seed} "
                           f"with --n {args.n} runs past it")
    if out is not None:
        from tqdm import tqdm

        from models.garments.dataset import write_dataset

        header = write_dataset(out, n=args.n, seed=seed, size=args.size, workers=args.workers,
                               family=args.family, overwrite=args.overwrite,
                               progress=lambda it: tqdm(it, total=args.n, unit="pair",
                                                        desc="synth", disable=args.quiet))
        last = header["seed_stop"] - 1
        print(f"wrote {header['n']} samples (seeds {header['seed_start']}..{last}, "
              f"{args.size}px) to {out}")
    if sheet is not None:
        n_sheet = min(args.n or 24, 96)
        write_contact_sheet(sheet, n=n_sheet, seed=seed, size=args.size)
        print(f"wrote contact sheet of {n_sheet} pairs to {sheet}")
    return 0


def _add_synth_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="render the garment world: a data set and/or a contact sheet")
    p.add_argument("--n", type=int, default=None, help="number of samples (sheet default: 24)")
    p.add_argument("--seed", type=int, default=0, help="first seed (offset into --split if given)")
    p.add_argument("--size", type=int, default=256, help="canvas side in pixels (64-1024)")
    p.add_argument("--out", type=Path, default=None, help="data set directory to write")
    p.add_argument("--workers", type=int, default=1, help="processes (same output for any count)")
    p.add_argument("--split", choices=["train", "val", "test", "heldout"], default=None,
                   help="take seeds from this split's range")
    p.add_argument("--family", choices=["standard", "heldout"], default=None,
                   help="shape family (default: held-out only for held-out seeds)")
    p.add_argument("--overwrite", action="store_true", help="replace a data set in --out")
    p.add_argument("--contact-sheet", type=Path, default=None, metavar="FILE.png",
                   help="also draw wild|flat pairs with landmarks, every category")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from service.settings import get_settings
    from service.status import StatusError, collect_status, format_status

    try:
        status = collect_status(get_settings(data_dir=args.data_dir))
    except StatusError as exc:
        raise CLIError(str(exc)) from None
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


# The option each field of `POST /assets` is given by in `flatlay generate`.
_GENERATE_FLAGS = {"pipeline": "--pipeline", "preset": "--preset", "output_size": "--size",
                   "background": "--background", "format": "--format", "seed": "--seed",
                   "steps": "--steps", "hint": "--hint"}


def _generate_options(args: argparse.Namespace, out_file: Path | None) -> tuple[str, dict]:
    """The pipeline and job options of `flatlay generate`, by the service's own rules
    (service.options: the preset's defaults, then what was given); CLIError otherwise."""
    from workers.local import SUFFIX_FORMATS

    fmt = args.format
    if out_file is not None:
        wanted = SUFFIX_FORMATS[out_file.suffix.lower()]
        if fmt is not None and fmt != wanted:
            raise CLIError(f"--format {fmt} does not match the output file {out_file} "
                           f"({wanted})")
        fmt = wanted
    structure = None
    if args.structure is not None:
        structure = _read_json(args.structure, "--structure")

    from service.errors import ApiError
    from service.options import given_options, resolve_options

    try:
        return resolve_options(args.pipeline, given_options(
            preset=args.preset, output_size=args.output_size, background=args.background,
            format=fmt, seed=args.seed, structure=structure, steps=args.steps,
            hint=args.hint),
            _default_pipeline())
    except ApiError as exc:
        field = exc.field or ""
        if field.startswith("structure"):
            where = field.removeprefix("structure").lstrip(".") or "structure"
            raise CLIError(f"--structure {args.structure}: {where}: {exc.message}") from None
        flag = _GENERATE_FLAGS.get(field, field)
        message = exc.message if exc.message.startswith(flag) else f"{flag}: {exc.message}"
        raise CLIError(message) from None


def _default_pipeline() -> str:
    from service.settings import Settings

    return Settings().default_pipeline


def _cmd_generate(args: argparse.Namespace) -> int:
    from models.pipeline import MAX_SIZE, MAX_STEPS, MIN_SIZE
    from service.settings import get_settings
    from workers.local import SUFFIX_FORMATS, failed_checks, find_photos, generate

    if args.output_size is not None and not MIN_SIZE <= args.output_size <= MAX_SIZE:
        raise CLIError(f"--size must be within {MIN_SIZE}–{MAX_SIZE}, got {args.output_size}")
    if args.seed is not None and not 0 <= args.seed <= 2**32 - 1:
        raise CLIError(f"--seed must be within 0–{2**32 - 1}, got {args.seed}")
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        raise CLIError(f"--steps must be within 1–{MAX_STEPS}, got {args.steps}")
    try:
        photos = find_photos(args.inputs)
    except FileNotFoundError as exc:
        raise CLIError(f"no such file or folder: {exc}") from None
    if not photos:
        raise CLIError("no JPEG, PNG or WebP photos in the given inputs")
    out = args.out or Path("flatlays")
    # `-o shirt.png` names the output file of one photo; anything else is a folder.
    out_file = out if out.suffix.lower() in SUFFIX_FORMATS and not out.is_dir() else None
    if out_file is not None and (len(photos) != 1 or args.inputs[0].is_dir()):
        raise CLIError(f"-o {out} names one file, but the inputs hold {len(photos)} photo(s) "
                       "or a folder: give -o a folder")
    if out_file is None and out.exists() and not out.is_dir():
        raise CLIError(f"-o {out} exists and is not a folder")
    if args.side_outputs is not None and args.side_outputs.exists() \
            and not args.side_outputs.is_dir():
        raise CLIError(f"--side-outputs {args.side_outputs} exists and is not a folder")
    pipeline, options = _generate_options(args, out_file)

    run = generate(photos, out, pipeline, options, get_settings(), out_file=out_file,
                   side_dir=args.side_outputs, show_progress=not args.quiet)
    where = out_file if out_file is not None else out
    passed = len(run.compliance) - len(run.compliance_failed)
    print(f"{len(run.written)} flat-lay(s) in {where}"
          + (f"; {len(run.failed)} photo(s) failed" if run.failed else ""))
    if run.compliance:
        print(f"{options['preset']} compliance: {passed} passed, {len(run.compliance_failed)} "
              "failed (each flat-lay's checks are in its <stem>.compliance.json)")
    for path in run.compliance_failed:
        print(f"  {path}: {failed_checks(run.compliance[path])}")
    return 1 if run.failed else 0


def _add_operator_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="queue depth, jobs by state and live workers")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "generate", help="turn local photos into flat-lays, no service (a progress bar)",
        description="Each photo gives its flat-lay, the pipeline's side outputs "
        "(<stem>.mask.png, .landmarks.json, .neighbours.json, .overlay.png, .coarse.png: those the "
        "pipeline produces) and its preset compliance check (<stem>.compliance.json), "
        "beside the flat-lay or in --side-outputs. Exit status 1 if a photo failed, 2 for a "
        "usage error (nothing is written then).",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="photos, or folders of photos")
    p.add_argument("-o", "--out", type=Path, default=None,
                   help="output folder (default ./flatlays), or for one photo the output "
                   "file (its suffix picks the format)")
    p.add_argument("--pipeline", default=None,
                   help="pipeline name (default: the service's, FLATLAY_DEFAULT_PIPELINE)")
    p.add_argument("--preset", default=None,
                   help="output preset: square-white (default), amazon-main, transparent; "
                   "gives the defaults of size, background and format")
    p.add_argument("--size", "--output-size", dest="output_size", type=int, default=None,
                   help="canvas side, 256–2048 (default: the preset's)")
    p.add_argument("--background", default=None,
                   help="'transparent' or #rrggbb (default: the preset's)")
    p.add_argument("--format", choices=["png", "jpeg", "webp"], default=None,
                   help="default: -o's suffix, else the preset's")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps of the generative pipelines (1–50; default: the "
                   "generator's)")
    p.add_argument("--hint", default=None,
                   help="what you know about the garment in words (e.g. 'long sleeves', "
                   "'midi dress'): evidence for retrieval beside the photo")
    p.add_argument("--structure", type=Path, default=None, metavar="FILE.json",
                   help='lay the garment out in this structure ({"category", "landmarks"}, '
                   "e.g. an earlier <stem>.landmarks.json) instead of the retrieved one")
    p.add_argument("--side-outputs", type=Path, default=None, metavar="DIR",
                   help="write side outputs and compliance files here (default: beside "
                   "each flat-lay)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_generate)


@contextmanager
def _job_store(data_dir: Path | None, migrated: bool = False) -> Iterator:
    """The job store of `data_dir` (brought to the newest schema first if `migrated`)."""
    from service.settings import get_settings
    from service.store import JobStore, migrate

    settings = get_settings(data_dir=data_dir)
    if migrated:
        settings.ensure_dirs()
        migrate(settings.resolved_database_url)
    store = JobStore(settings.resolved_database_url)
    try:
        yield store
    finally:
        store.dispose()


def _cmd_keys_create(args: argparse.Namespace) -> int:
    from service.auth import create_key
    from service.fetch import AllowList, FetchError, check_public_url
    from service.settings import get_settings

    if args.webhook_url:
        allow = AllowList.parse(get_settings(data_dir=args.data_dir).fetch_allow_hosts)
        try:
            check_public_url(args.webhook_url, allow)
        except FetchError as exc:
            raise CLIError(f"--webhook-url: {exc.message}") from None
    with _job_store(args.data_dir, migrated=True) as store:
        try:
            new = create_key(store, args.tenant, name=args.name, webhook_url=args.webhook_url)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    print(f"tenant: {new.view.tenant_id}\nkey id: {new.view.id} ({new.view.prefix}…)")
    print(f"webhook secret: {new.view.webhook_secret} (verifies this key's webhooks)")
    print("the key below is shown once; only its hash is kept:")
    print(new.key)  # alone on the last line, for scripts: `flatlay keys create … | tail -1`
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    import json

    with _job_store(args.data_dir) as store:
        keys = store.list_api_keys(args.tenant)
    rows = [{"id": k.id, "prefix": k.prefix, "tenant": k.tenant_id, "name": k.name,
             "webhook_url": k.webhook_url, "created_at": k.created_at.isoformat(),
             "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None} for k in keys]
    if args.json:
        print(json.dumps(rows, indent=2))
    for r in [] if args.json else rows:
        state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "live"
        print(f"{r['id']}  {r['prefix']}…  tenant={r['tenant']}  {state}  {r['name'] or ''}")
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    with _job_store(args.data_dir) as store:
        revoked = store.revoke_api_key(args.key)
    if revoked is None:
        raise CLIError(f"no single live key with id or prefix {args.key!r}")
    print(f"revoked {revoked.id} ({revoked.prefix}…) of tenant {revoked.tenant_id}")
    return 0


def _add_keys_commands(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="API keys: create, list, revoke")
    ksub = keys.add_subparsers(dest="action", metavar="ACTION")
    ksub.required = True
    p = ksub.add_parser("create", help="a new key for a tenant, printed once on the last line")
    p.add_argument("--tenant", required=True, help="tenant the key acts for")
    p.add_argument("--name", default=None, help="a note on what the key is for")
    p.add_argument("--webhook-url", default=None, help="default webhook URL of the key")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_keys_create)
    p = ksub.add_parser("list", help="keys (prefix, tenant, state); never the keys themselves")
    p.add_argument("--tenant", default=None)
    p.add_argument("--json", action="store_true")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_keys_list)
    p = ksub.add_parser("revoke", help="revoke a key by its id or visible prefix")
    p.add_argument("key", help="key id or prefix (fl_…)")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_keys_revoke)


def _cmd_submit(args: argparse.Namespace) -> int:
    import os

    from client.inputs import InputError
    from client.submit import SubmitAbort, SubmitOptions, run_command

    job_options = {k: v for k, v in {
        "pipeline": args.pipeline, "preset": args.preset, "output_size": args.output_size,
        "background": args.background, "format": args.format,
        "hint": args.hint}.items() if v is not None}
    opts = SubmitOptions(
        out=args.out, job_options=job_options, batch_size=args.batch_size,
        outputs=[o.strip() for o in (args.outputs or "").split(",") if o.strip()],
        progress=not args.quiet)
    url = args.url or os.environ.get("FLATLAY_URL") or None
    key = args.key or os.environ.get("FLATLAY_API_KEY") or None
    try:
        return run_command(args.inputs, url, key, opts, dry=args.dry_run)
    except InputError as exc:
        raise CLIError(str(exc)) from None
    except SubmitAbort as exc:
        if exc.usage:
            raise CLIError(str(exc)) from None
        print(f"flatlay submit: error: {exc}", file=sys.stderr)
        return 1


def _add_client_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit", help="send photos, folders, ZIPs or manifests to a Flatlay server; "
        "flat-lays named by SKU come back",
        description="Sends the inputs to a Flatlay server as batches, shows submitted / done "
        "/ failed, and writes each result to OUT as <sku>.<ext> (with <sku>.<output>.<ext> for "
        "--outputs) and OUT/manifest.csv (sku, status, error code, compliance, attributes). "
        "OUT/.flatlay-submit.json records what was sent: the same command after an "
        "interruption continues without sending anything twice. Exit status 0 when every "
        "item succeeded, 1 otherwise, 2 for a usage error.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="PATH",
                   help="photos, folders of photos (recursively), ZIPs of photos, or "
                   "manifests (.csv with columns sku and image_url/image/path, or .json list "
                   "of {sku, image_url}; a path is relative to the manifest, a URL is fetched "
                   "by the server)")
    p.add_argument("--url", default=None, help="the server (default: $FLATLAY_URL)")
    p.add_argument("--key", default=None,
                   help="API key (default: $FLATLAY_API_KEY, which keeps it out of ps)")
    p.add_argument("-o", "--out", type=Path, default=Path("flatlays"),
                   help="output folder (default ./flatlays)")
    p.add_argument("--pipeline", default=None, help="pipeline (default: the server's)")
    p.add_argument("--preset", default=None,
                   help="output preset: square-white, amazon-main, transparent")
    p.add_argument("--size", "--output-size", dest="output_size", type=int, default=None,
                   help="canvas side, px (default: the preset's)")
    p.add_argument("--background", default=None, help="'transparent' or #rrggbb")
    p.add_argument("--format", choices=["png", "jpeg", "webp"], default=None)
    p.add_argument("--hint", default=None,
                   help="what every garment sent is, in words (e.g. 'midi dress'): "
                   "evidence for retrieval beside each photo")
    p.add_argument("--outputs", default=None, metavar="NAME,…",
                   help="side outputs to download too: mask, landmarks, neighbours, overlay, "
                   "coarse, attributes (those the pipeline makes)")
    p.add_argument("--batch-size", type=int, default=50, help="items per batch (1–1000)")
    p.add_argument("--dry-run", action="store_true", help="list what would be sent; send nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_submit)


# Each wing adds its subcommands here; the registration functions themselves import nothing heavy.
_REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_service_commands,
    _add_model_commands,
    _add_synth_command,
    _add_operator_commands,
    _add_keys_commands,
    _add_client_commands,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatlay", description="Garment photos in, standardized flat-lay images out."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in _REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"flatlay {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
