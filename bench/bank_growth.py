"""The bank as knowledge: how the retrieved structure improves as the bank grows, without
retraining anything (issue 12; RAGDiffusion's promise that a larger database gives better
structure).

    python bench/bank_growth.py [--sizes 6000,12000,24000,48000] [--split val] [--n 300]

The bank grows in steps from the shipped bank's own seeds (`BANK_SEED_START` on; its first
6,000 are the shipped bank), embedded by the shipped StructureNet. Each size scores the same
photos, embedded as stage 2 embeds them (the parser's crop), with the retrieval benchmark's
own metrics (the category vote, SLLE's fused silhouette IoU and landmark NME over the
embedding's neighbours, and top-1's), and, on the first `--pipeline-n` of them, the structure
the service itself delivers behind that bank: `flatten` at 1024² (its category decision and
landmark fit), scored as `flatlay bench quality` scores it.
Writes bench/results/bank-growth-SPLIT.{md,json,png}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import write_variants  # noqa: E402
from models.bank_builder import BANK_SEED_START, world_structures  # noqa: E402
from models.eval.quality import load_truth, run_and_score  # noqa: E402
from models.eval.retrieval import (  # noqa: E402
    embed_view,
    render_eval,
    search_ms,
    structure_quality,
)
from models.garments import SPLITS  # noqa: E402
from models.pipeline import PipelineOptions, configure, get_pipeline  # noqa: E402
from models.structurenet import DEFAULT_WEIGHTS, StructureNet, embedding_record  # noqa: E402
from models.train.pairs import SILHOUETTE_SIZE  # noqa: E402
from structure_bank.bank import StructureBank  # noqa: E402

RESULTS = REPO / "bench" / "results"
LEGEND = {"slle": "SLLE over the neighbours", "top1": "top-1", "accuracy": "the top-10 vote",
          "flatten": "flatten (the service's structure)"}
COLUMNS = [("entries", "entries", "d"), ("category_accuracy", "category (vote)", ".3f"),
           ("silhouette_iou_slle", "IoU SLLE", ".4f"), ("silhouette_iou_top1", "IoU top-1", ".4f"),
           ("landmark_nme_slle", "NME SLLE", ".5f"), ("landmark_nme_top1", "NME top-1", ".5f"),
           ("flatten_category", "flatten: category", ".3f"),
           ("flatten_iou", "flatten: IoU", ".4f"), ("flatten_nme", "flatten: NME", ".5f"),
           ("search_ms_p50", "search ms p50", ".3f"), ("bank_mb", "bank MB on disk", ".1f")]


def service_structure(folder: Path, truths: list, size: int) -> dict:
    """`flatten` behind the bank in `folder`: category accuracy, silhouette IoU and landmark
    NME (category right) as `flatlay bench quality` reports them."""
    configure(folder)
    pipe = get_pipeline("flatten")
    pipe.load()
    rows = []
    for t in truths:
        record, _, _ = run_and_score(pipe, t, PipelineOptions(output_size=size, seed=t.seed))
        if record["failure"] is None:
            rows.append(record)
    nme = [r["landmark_nme"] for r in rows if r.get("landmark_nme") is not None]
    return {"flatten_category": float(np.mean([r["category_ok"] for r in rows])),
            "flatten_iou": float(np.mean([r["silhouette_iou"] for r in rows])),
            "flatten_nme": float(np.mean(nme)) if nme else None, "flatten_n": len(rows)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["entries"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=110)
    for ax, (keys, title) in zip(axes, [
            (("silhouette_iou_slle", "silhouette_iou_top1", "flatten_iou"),
             "silhouette IoU (higher is better)"),
            (("landmark_nme_slle", "landmark_nme_top1", "flatten_nme"),
             "landmark NME (lower is better)"),
            (("category_accuracy", "flatten_category"), "category")], strict=True):
        for key in keys:
            if rows[0].get(key) is None:
                continue
            ax.plot(sizes, [r[key] for r in rows], marker="o", label=LEGEND[key.split("_")[-1]
                                                                           if "flatten" not in key
                                                                           else "flatten"])
        ax.set_xscale("log")
        ax.set_xlabel("bank entries")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="6000,12000,24000,48000",
                    help="comma-separated bank sizes, ascending")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--n", type=int, default=300, help="photos: the split's first n seeds")
    ap.add_argument("--k", type=int, default=8, help="structures SLLE fuses")
    ap.add_argument("--pipeline-n", type=int, default=100,
                    help="photos `flatten` runs on behind each bank (0: none)")
    ap.add_argument("--size", type=int, default=1024, help="photo and canvas side for flatten")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if not sizes or sizes != sorted(set(sizes)) or sizes[0] < 1:
        ap.error("--sizes must be positive and ascending")
    if sizes[-1] > 200_000:  # the retrieval benchmark's zero-shot structures start there
        ap.error("--sizes must stay at or under 200000")

    started = time.time()
    model = StructureNet.from_pretrained(DEFAULT_WEIGHTS)
    start = SPLITS[args.split][0]
    samples = render_eval(list(range(start, start + args.n)), model)
    emb = embed_view(model, samples, "parsed")
    bank = StructureBank(embedding_dim=model.embed_dim, silhouette_size=SILHOUETTE_SIZE,
                         model=embedding_record(model))
    truths = [load_truth(start + i, args.size) for i in range(min(args.pipeline_n, args.n))]
    rows, have = [], 0
    for size in sizes:
        seeds = list(range(BANK_SEED_START + have, BANK_SEED_START + size))
        bank.add(world_structures(seeds, model, workers=args.workers))
        have = size
        timings = search_ms(bank, emb, args.k)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "bank"
            bank.save(folder)
            mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
            served = service_structure(folder, truths, args.size) if truths else {}
        rows.append({"variant": f"{size:,} entries", "entries": size,
                     **structure_quality(bank, samples, emb, args.k), **served,
                     "search_ms_p50": float(np.percentile(timings, 50)), "bank_mb": mb})
        print(rows[-1], flush=True)
    intro = [f"# Bank growth ({args.split})", "",
             f"`python bench/bank_growth.py --sizes {args.sizes} --split {args.split} "
             f"--n {args.n}`: the first {args.n} {args.split} photos (seeds {start}–"
             f"{start + args.n - 1}) embedded on the parser's crop by the shipped StructureNet "
             f"(fingerprint {model.fingerprint}), against banks of the first N garment-world "
             f"structures from seed {BANK_SEED_START} (the shipped bank is the first 6,000); "
             f"SLLE fuses k = {args.k} of the voted category. `flatten` columns: the first "
             f"{len(truths)} photos at {args.size}², the service's own structure (category "
             f"decision, landmark fit) behind each bank. Nothing retrained between rows. "
             f"Wall time {time.time() - started:.0f} s.", ""]
    print(write_variants(args.out, f"bank-growth-{args.split}", intro, rows, COLUMNS))
    plot(rows, args.out / f"bank-growth-{args.split}.png")


if __name__ == "__main__":
    main()
