"""The bank a running service grows: a copy of the shipped bank in the data directory, to
which structures are appended under a file lock (several workers may add at once)."""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from structure_bank.bank import Structure, StructureBank
from structure_bank.builder import default_bank_path


def ensure_runtime_bank(path: Path) -> Path:
    """Create the runtime bank at `path` from the shipped bank if it is not there yet."""
    path = Path(path)
    if not (path / "bank.json").is_file():
        with _locked(path):
            if not (path / "bank.json").is_file():
                tmp = path.with_name(path.name + ".seed")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(default_bank_path(), tmp)
                tmp.rename(path)
    return path


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def add_to_runtime_bank(path: Path, structures: list[Structure]) -> int:
    """Append `structures` to the bank at `path` (created from the shipped bank if needed);
    returns the new size. Ids already in the bank are refused (ValueError)."""
    ensure_runtime_bank(path)
    with _locked(path):
        bank = StructureBank.load(path)
        bank.add(structures)
        bank.save(path)
        return len(bank)


def migrate_runtime_bank(path: Path, is_current: Callable[[StructureBank], bool],
                         migrate: Callable[[StructureBank], StructureBank]) -> StructureBank:
    """The bank at `path`, passed through `migrate` and saved unless `is_current` already
    holds: under the lock, so of several workers finding it stale one migrates it and the
    others load the result."""
    with _locked(Path(path)):
        bank = StructureBank.load(path)
        if not is_current(bank):
            bank = migrate(bank)
            bank.save(path)
        return bank
