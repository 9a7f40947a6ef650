"""Nearest-neighbour search over L2-normalised structure embeddings (cosine = dot product).

`ExactIndex` is the default: one matrix product, exact, fine to a few hundred thousand
entries. `HNSWIndex` (faiss) answers the same calls for banks of a million and more.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class EmbeddingIndex(Protocol):
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) float32 → (scores (Q, k) float32, rows (Q, k) int64), best first.
        Rows past the index size are -1 with score -inf."""

    def add(self, vectors: np.ndarray) -> None: ...

    @property
    def size(self) -> int: ...


def _pad(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if scores.shape[1] >= k:
        return scores, rows
    q, have = scores.shape
    pad_s = np.full((q, k - have), -np.inf, np.float32)
    pad_r = np.full((q, k - have), -1, np.int64)
    return np.hstack([scores, pad_s]), np.hstack([rows, pad_r])


class ExactIndex:
    """Brute-force inner product."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray | None = None, dim: int | None = None) -> None:
        if vectors is None:
            vectors = np.zeros((0, dim or 0), np.float32)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    @property
    def size(self) -> int:
        return self.vectors.shape[0]

    def add(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(np.vstack([self.vectors, vectors]), dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return top_k(np.atleast_2d(queries).astype(np.float32) @ self.vectors.T, k)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-first top k of each row of `scores` (Q, N); -inf entries never count."""
    n = scores.shape[1]
    kk = min(k, n)
    if kk == 0:
        return _pad(np.zeros((scores.shape[0], 0), np.float32),
                    np.zeros((scores.shape[0], 0), np.int64), k)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    rows = np.take_along_axis(part, order, axis=1).astype(np.int64)
    best = np.take_along_axis(part_scores, order, axis=1).astype(np.float32)
    rows[~np.isfinite(best)] = -1
    return _pad(best, rows, k)


class HNSWIndex:
    """Approximate search with faiss' HNSW graph (inner product)."""

    kind = "hnsw"

    def __init__(self, dim: int, m: int = 32, ef_construction: int = 64, ef_search: int = 256):
        import faiss

        self._faiss = faiss
        self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.hnsw.efSearch = ef_search

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, rows = self.index.search(q, k)
        scores = scores.astype(np.float32)
        scores[rows < 0] = -np.inf
        return scores, rows.astype(np.int64)

    def save(self, path: str) -> None:
        self._faiss.write_index(self.index, path)

    @classmethod
    def load(cls, path: str, ef_search: int = 256) -> HNSWIndex:
        import faiss

        obj = cls.__new__(cls)
        obj._faiss = faiss
        obj.index = faiss.read_index(path)
        obj.index.hnsw.efSearch = ef_search
        return obj


def make_index(vectors: np.ndarray, kind: str = "exact", **kwargs: int) -> EmbeddingIndex:
    """Build an index of `kind` ('exact' or 'hnsw') over (N, D) float32 unit vectors."""
    if kind == "exact":
        return ExactIndex(vectors)
    if kind == "hnsw":
        index = HNSWIndex(vectors.shape[1], **kwargs)
        if len(vectors):
            index.add(vectors)
        return index
    raise ValueError(f"unknown index kind {kind!r}; use 'exact' or 'hnsw'")
