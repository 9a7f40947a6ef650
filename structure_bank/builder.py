"""The shipped default bank (structure_bank/default/): where it lives.

It is built by the models that embed its structures (models.bank_builder, `flatlay bank
build`); the pipelines, the runtime bank and `flatlay bank` find it here.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_BANK = Path(__file__).parent / "default"


def default_bank_path() -> Path:
    return DEFAULT_BANK
