"""Layer 7, one repository on disk: :class:`Repo` is a thin facade over the modules here, each
owning one concept (see ``docs/architecture.md``)."""

from .batch import Batch
from .blockstore import BlockStore
from .gc import GcReport
from .repo import Repo

__all__ = ["Batch", "BlockStore", "GcReport", "Repo"]
