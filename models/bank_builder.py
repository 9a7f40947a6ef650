"""The garment world's structures for a bank: render each garment's flat-lay structure, embed
it with StructureNet's structure tower, keep landmarks and silhouette alongside
(`flatlay bank build`, `flatlay bank add`, `POST /structures`, the retrieval benchmarks).

The bank itself, its on-disk format and where the shipped one lives are structure_bank's.
"""

from __future__ import annotations

import numpy as np

from models.structurenet import (
    StructureNet,
    embed_structures,
    embedding_record,
    structure_map_u8,
)
from models.train.pairs import SILHOUETTE_SIZE, render_pairs
from structure_bank.bank import Structure, StructureBank
from structure_bank.schema import CATEGORIES

# Bank entries come from their own train-split seed range, apart from StructureNet's pairs.
BANK_SEED_START = 500_000


def world_structures(
    seeds: list[int],
    model: StructureNet,
    category: str | None = None,
    workers: int = 2,
    id_prefix: str = "gw",
) -> list[Structure]:
    """Structures of the garment-world garments `seeds` (forced to `category` if given),
    embedded by `model`'s structure tower (the caller loads it once)."""
    pairs = render_pairs(seeds, model.photo_size, model.structure_size, workers=workers,
                         category=category, desc="render structures")
    embs = embed_structures(model, pairs.maps)
    out = []
    for i, seed in enumerate(pairs.seeds):
        cat = CATEGORIES[int(pairs.categories[i])]
        out.append(Structure(
            id=f"{id_prefix}-{cat}-{int(seed)}" if category else f"{id_prefix}-{int(seed)}",
            category=cat,
            landmarks=pairs.landmarks_of(i),
            silhouette=pairs.silhouette_of(i),
            embedding=embs[i],
            attributes={"seed": int(seed)},
            source="garment-world",
        ))
    return out


def build_bank(
    n: int,
    model: StructureNet,
    seed_start: int = BANK_SEED_START,
    workers: int = 2,
) -> StructureBank:
    """A bank of the `n` garment-world garments from `seed_start` on (train split), embedded
    by `model`."""
    structures = world_structures(list(range(seed_start, seed_start + n)), model, None,
                                  workers)
    bank = StructureBank(embedding_dim=len(structures[0].embedding),
                         silhouette_size=SILHOUETTE_SIZE,
                         model={**embedding_record(model),
                                "seeds": [seed_start, seed_start + n]})
    bank.add(structures)
    return bank


def embed_structure(model, landmarks: np.ndarray, silhouette: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """One structure's embedding with `model`'s structure tower: (D,) float32 unit vector,
    from the map as the bank's builder embeds it."""
    smap = structure_map_u8(landmarks, silhouette, model.structure_size)
    return embed_structures(model, smap[None])[0]

