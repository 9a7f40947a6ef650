"""The benchmarks' library side (`flatlay bench …`): each module scores one thing against the
garment world's truth. What they share: which seeds a split's first n are."""

from __future__ import annotations


def split_seeds(split: str, n: int) -> range:
    """The first n seeds of `split`; ValueError for an unknown split or an n it has not."""
    from models.garments import SPLITS

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; available: {', '.join(SPLITS)}")
    start, stop = SPLITS[split]
    if not 1 <= n <= stop - start:
        raise ValueError(f"n must be in 1..{stop - start} for split {split}, got {n}")
    return range(start, start + n)
