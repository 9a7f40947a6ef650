"""The structure bank: standardized garment structures to retrieve and fuse.

An entry is one flat-lay structure: id, category, attributes, canonical landmarks, a
silhouette and its structure embedding. On disk a bank is a folder:

    bank.json        header: format, version, count, embedding_dim, silhouette_size, model,
                     entries per category
    entries.jsonl    one JSON object per entry, in row order: id, category, attributes, source
    arrays.npz       embeddings (N, D) float32, L2-normalised;
                     landmarks (ΣL, 2) float32 in the canonical unit square (x right, y down),
                     landmark_offsets (N + 1,) int64: entry i owns rows offsets[i]:offsets[i+1];
                     silhouettes (N, S·S/8) uint8: np.packbits of the (S, S) bool mask

Adding entries never needs retraining: the structure tower embeds a new structure and the
entry is appended (RAGDiffusion's zero-shot path for new garment families).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from structure_bank.index import EmbeddingIndex, make_index, top_k

FORMAT = "flatlay-structure-bank"
VERSION = 1


@dataclass
class Structure:
    """One standardized structure.

    landmarks: (L, 2) float32, canonical unit square. silhouette: (S, S) bool on the
    canonical canvas. embedding: (D,) float32, L2-normalised (structure tower).
    """

    id: str
    category: str
    landmarks: np.ndarray
    silhouette: np.ndarray
    embedding: np.ndarray
    attributes: dict[str, Any] = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class Hit:
    row: int
    id: str
    category: str
    score: float  # cosine similarity


class StructureBank:
    """Entries in row order plus a search index over their embeddings."""

    def __init__(self, embedding_dim: int, silhouette_size: int, model: dict | None = None):
        self.embedding_dim = embedding_dim
        self.silhouette_size = silhouette_size
        self.model = model or {}
        self.meta: list[dict[str, Any]] = []
        self.embeddings = np.zeros((0, embedding_dim), np.float32)
        self.landmarks = np.zeros((0, 2), np.float32)
        self.offsets = np.zeros(1, np.int64)
        self.silhouettes = np.zeros((0, silhouette_size * silhouette_size // 8), np.uint8)
        self.categories = np.zeros(0, dtype=object)
        self._index: EmbeddingIndex | None = None
        self.index_kind = "exact"
        self._ids: dict[str, int] = {}

    # Size and access ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.meta)

    def category_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(m["category"] for m in self.meta).items()))

    def row_of(self, entry_id: str) -> int:
        return self._ids[entry_id]

    def entry_landmarks(self, row: int) -> np.ndarray:
        return self.landmarks[self.offsets[row] : self.offsets[row + 1]]

    def entry_silhouette(self, row: int) -> np.ndarray:
        s = self.silhouette_size
        return np.unpackbits(self.silhouettes[row], count=s * s).reshape(s, s).astype(bool)

    def entry(self, row: int) -> Structure:
        m = self.meta[row]
        return Structure(
            id=m["id"],
            category=m["category"],
            landmarks=self.entry_landmarks(row).copy(),
            silhouette=self.entry_silhouette(row),
            embedding=self.embeddings[row].copy(),
            attributes=m.get("attributes", {}),
            source=m.get("source", ""),
        )

    # Adding ------------------------------------------------------------------------------------

    def add(self, structures: list[Structure]) -> None:
        """Append entries; ids must be new. Embeddings are re-normalised to unit length."""
        if not structures:
            return
        s = self.silhouette_size
        new_meta, embs, lms, sils, counts = [], [], [], [], []
        seen = set(self._ids)
        for st in structures:
            if st.id in seen:
                raise ValueError(f"structure id {st.id!r} is already in the bank")
            seen.add(st.id)
            if st.embedding.shape != (self.embedding_dim,):
                raise ValueError(
                    f"{st.id}: embedding shape {st.embedding.shape}, expected "
                    f"({self.embedding_dim},)"
                )
            if st.silhouette.shape != (s, s):
                raise ValueError(f"{st.id}: silhouette shape {st.silhouette.shape}, expected "
                                 f"({s}, {s})")
            lm = np.asarray(st.landmarks, np.float32)
            if lm.ndim != 2 or lm.shape[1] != 2:
                raise ValueError(f"{st.id}: landmarks must be (L, 2), got {lm.shape}")
            new_meta.append({"id": st.id, "category": st.category,
                             "attributes": st.attributes, "source": st.source})
            e = np.asarray(st.embedding, np.float32)
            embs.append(e / max(float(np.linalg.norm(e)), 1e-12))
            lms.append(lm)
            counts.append(len(lm))
            sils.append(np.packbits(st.silhouette.astype(bool).ravel()))
        base = len(self.meta)
        self.meta.extend(new_meta)
        for i, m in enumerate(new_meta):
            self._ids[m["id"]] = base + i
        new_embs = np.stack(embs).astype(np.float32)
        self.embeddings = np.vstack([self.embeddings, new_embs])
        self.landmarks = np.vstack([self.landmarks, *lms])
        self.offsets = np.concatenate([self.offsets, self.offsets[-1] + np.cumsum(counts)])
        self.silhouettes = np.vstack([self.silhouettes, np.stack(sils)])
        self.categories = np.array([m["category"] for m in self.meta], dtype=object)
        if self._index is not None:
            self._index.add(new_embs)

    def subset(self, rows: list[int] | np.ndarray) -> StructureBank:
        """A new bank of the entries at `rows`, in that order (arrays sliced, not re-encoded)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = StructureBank(self.embedding_dim, self.silhouette_size, self.model)
        out.meta = [self.meta[r] for r in rows]
        out.embeddings = self.embeddings[rows].copy()
        counts = self.offsets[rows + 1] - self.offsets[rows]
        out.landmarks = (np.concatenate([self.entry_landmarks(r) for r in rows])
                         if len(rows) else np.zeros((0, 2), np.float32))
        out.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        out.silhouettes = self.silhouettes[rows].copy()
        out.categories = self.categories[rows]
        out._ids = {m["id"]: i for i, m in enumerate(out.meta)}
        return out

    def reembedded(self, embeddings: np.ndarray, model: dict) -> StructureBank:
        """The same entries under `embeddings` (N, D) from another embedding `model` (its
        header record): a bank moved to new weights keeps every structure it holds."""
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.shape != (len(self), self.embedding_dim):
            raise ValueError(f"embeddings shape {embeddings.shape}, expected "
                             f"({len(self)}, {self.embedding_dim})")
        out = self.subset(np.arange(len(self)))
        out.model = dict(model)
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        out.embeddings = embeddings / np.maximum(norms, 1e-12)
        return out

    # Search ------------------------------------------------------------------------------------

    def use_index(self, kind: str = "exact", **kwargs: int) -> None:
        """Choose the search backend ('exact' or 'hnsw') and build it over every entry."""
        self.index_kind = kind
        self._index = make_index(self.embeddings, kind, **kwargs)

    @property
    def index(self) -> EmbeddingIndex:
        if self._index is None:
            self.use_index(self.index_kind)
        return self._index  # type: ignore[return-value]

    def search(self, query: np.ndarray, k: int, category: str | None = None) -> list[Hit]:
        """The k entries nearest to `query` (D,), best first; only `category` when given.

        A category search over-fetches from the index and falls back to an exact search
        over that category when the index returns too few of it.
        """
        q = np.asarray(query, np.float32).reshape(1, -1)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        if category is None:
            scores, rows = self.index.search(q, k)
            return self._hits(scores[0], rows[0])
        if self.index_kind != "exact":
            scores, rows = self.index.search(q, min(len(self), max(8 * k, 64)))
            keep = (rows[0] >= 0) & (self.categories[np.maximum(rows[0], 0)] == category)
            if keep.sum() >= k:
                return self._hits(scores[0][keep][:k], rows[0][keep][:k])
        members = np.flatnonzero(self.categories == category)
        if members.size == 0:
            return []
        scores, local = top_k(q @ self.embeddings[members].T, k)
        valid = local[0] >= 0
        return self._hits(scores[0][valid], members[local[0][valid]])

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
        return [Hit(int(r), self.meta[r]["id"], self.meta[r]["category"], float(s))
                for s, r in zip(scores, rows, strict=True) if r >= 0]

    # Persistence -------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the bank folder atomically (a temp folder renamed over the old one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
        try:
            header = {
                "format": FORMAT,
                "version": VERSION,
                "count": len(self),
                "embedding_dim": self.embedding_dim,
                "silhouette_size": self.silhouette_size,
                "model": self.model,
                "categories": self.category_counts(),
            }
            (tmp / "bank.json").write_text(json.dumps(header, indent=2) + "\n")
            with (tmp / "entries.jsonl").open("w") as fh:
                for m in self.meta:
                    fh.write(json.dumps(m, sort_keys=True) + "\n")
            np.savez_compressed(
                tmp / "arrays.npz",
                embeddings=self.embeddings,
                landmarks=self.landmarks,
                landmark_offsets=self.offsets,
                silhouettes=self.silhouettes,
            )
            if path.exists():
                old = path.with_name(f".{path.name}-old-{os.getpid()}")
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old)
            else:
                tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path: Path) -> StructureBank:
        path = Path(path)
        header_path = path / "bank.json"
        if not header_path.is_file():
            raise FileNotFoundError(f"{path} is not a structure bank (no bank.json)")
        header = json.loads(header_path.read_text())
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise ValueError(f"{path}: unsupported bank format {header.get('format')!r} "
                             f"v{header.get('version')}")
        bank = cls(header["embedding_dim"], header["silhouette_size"], header.get("model"))
        with (path / "entries.jsonl").open() as fh:
            bank.meta = [json.loads(line) for line in fh if line.strip()]
        with np.load(path / "arrays.npz") as arrays:
            bank.embeddings = arrays["embeddings"].astype(np.float32)
            bank.landmarks = arrays["landmarks"].astype(np.float32)
            bank.offsets = arrays["landmark_offsets"].astype(np.int64)
            bank.silhouettes = arrays["silhouettes"]
        if len(bank.meta) != bank.embeddings.shape[0] or len(bank.meta) != header["count"]:
            raise ValueError(f"{path}: entries and arrays disagree on the entry count")
        bank.categories = np.array([m["category"] for m in bank.meta], dtype=object)
        bank._ids = {m["id"]: i for i, m in enumerate(bank.meta)}
        return bank
