"""Standardized garment structures to retrieve: entries, on-disk format, search."""

from structure_bank.bank import Hit, Structure, StructureBank
from structure_bank.index import ExactIndex, HNSWIndex, make_index

__all__ = ["ExactIndex", "HNSWIndex", "Hit", "Structure", "StructureBank", "make_index"]
