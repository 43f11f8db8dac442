"""``repo.blockstore``: raw, hash-checked access to a repository's blocks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import cbor
from .cid import CID, cid_for_cbor, parse_cid, verify_block

if TYPE_CHECKING:
    from .repo import Repo


class BlockStore:
    """Raw access to the repository's blocks (``repo.blockstore``)."""

    def __init__(self, repo: Repo) -> None:
        self._repo = repo

    def get(self, cid: CID | str) -> bytes | None:
        """A block's bytes, or None."""
        return self._repo._store_or_raise().get_block(parse_cid(cid))

    def has(self, cid: CID | str) -> bool:
        """True if the block is stored."""
        return self._repo._store_or_raise().has_block(parse_cid(cid))

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, (CID, str)) and self.has(cid)

    def put(self, data: bytes, cid: CID | str | None = None) -> CID:
        """Store a DAG-CBOR block; when ``cid`` is given the bytes must hash to it."""
        data = bytes(data)
        cbor.decode(data, "block")
        if cid is None:
            cid = cid_for_cbor(data)
        else:
            cid = parse_cid(cid, allow_raw=False)
            verify_block(cid, data)
        repo = self._repo
        with repo._lock:
            store = repo._store_or_raise()
            with store.transaction():
                store.put_blocks([(cid, data)], repo._rev)
        return cid

    def __iter__(self) -> Iterator[tuple[CID, bytes]]:
        return self._repo._store_or_raise().iter_blocks()

    def __len__(self) -> int:
        return self._repo._store_or_raise().count_blocks()
