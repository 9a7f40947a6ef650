"""Search speed at bank sizes far beyond the shipped bank (`flatlay bench retrieval-scale`).

Large banks are synthesised around the real bank's embeddings (each new entry is a real
entry plus Gaussian noise, re-normalised), so they keep the real clustering by category and
shape; queries are held-out perturbations of real entries. Exact search (one matrix product)
is compared with faiss HNSW; ANN recall@10 is measured against the exact top 10.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from structure_bank.index import ExactIndex, HNSWIndex


def synthetic_bank(base: np.ndarray, n: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """(n, D) unit vectors around `base` (M, D) unit vectors."""
    out = np.empty((n, base.shape[1]), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        rows = base[rng.integers(len(base), size=stop - start)]
        v = rows + rng.normal(0, noise, rows.shape).astype(np.float32)
        out[start:stop] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def _time_queries(index, queries: np.ndarray, k: int) -> tuple[list[float], np.ndarray]:  # noqa: ANN001
    ms, rows = [], []
    for q in queries:
        t = time.perf_counter()
        _, r = index.search(q[None], k)
        ms.append((time.perf_counter() - t) * 1000)
        rows.append(r[0])
    return ms, np.stack(rows)


def benchmark_scale(
    base: np.ndarray,
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000),
    queries: int = 200,
    k: int = 10,
    noise: float = 0.05,
    hnsw_m: int = 32,
    ef_construction: int = 64,
    ef_searches: tuple[int, ...] = (64, 128, 256),
    seed: int = 0,
) -> dict:
    import faiss

    faiss.omp_set_num_threads(2)
    rng = np.random.default_rng(seed)
    qs = synthetic_bank(base, queries, noise, rng)
    rows = []
    for n in tqdm(sizes, desc="bank sizes"):
        vectors = synthetic_bank(base, n, noise, rng)
        exact = ExactIndex(vectors)
        exact_ms, exact_rows = _time_queries(exact, qs, k)
        t = time.perf_counter()
        hnsw = HNSWIndex(vectors.shape[1], m=hnsw_m, ef_construction=ef_construction)
        hnsw.add(vectors)
        row = {
            "entries": n,
            "exact_p50_ms": round(float(np.percentile(exact_ms, 50)), 3),
            "exact_p99_ms": round(float(np.percentile(exact_ms, 99)), 3),
            "hnsw_build_s": round(time.perf_counter() - t, 1),
        }
        # One graph, several search widths: the speed/recall trade-off at this size.
        for ef in ef_searches:
            hnsw.index.hnsw.efSearch = ef
            ann_ms, ann_rows = _time_queries(hnsw, qs, k)
            recall = float(np.mean([len(set(a) & set(e)) / k
                                    for a, e in zip(ann_rows, exact_rows, strict=True)]))
            row[f"hnsw_ef{ef}_p50_ms"] = round(float(np.percentile(ann_ms, 50)), 3)
            row[f"hnsw_ef{ef}_p99_ms"] = round(float(np.percentile(ann_ms, 99)), 3)
            row[f"hnsw_ef{ef}_recall_at_10"] = round(recall, 4)
        rows.append(row)
        del vectors, exact, hnsw
    return {"dim": int(base.shape[1]), "k": k, "queries": queries, "noise": noise,
            "hnsw": {"m": hnsw_m, "ef_construction": ef_construction,
                     "ef_search": list(ef_searches)},
            "threads": 2, "sizes": rows}
