"""``repo.blockstore``: raw, hash-checked access to a repository's blocks.

Every block read through it is hashed again against its CID, so a damaged
store raises :class:`~pypds.errors.BlockHashMismatch` instead of handing out
(or serving, as getBlocks does) bytes that are not the block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import cbrrr

from ..codec import cbor
from ..codec.cid import CID, cid_for_cbor, parse_cid, verify_block
from ..storage.store import SqliteError, storage_error

if TYPE_CHECKING:
    from ..storage.store import Store
    from .state import RepoState


class BlockStore:
    """Raw access to the repository's blocks (``repo.blockstore``).

    Every call holds the handle's lock, so the block store is as thread-safe
    as the handle; iteration reads in pages, taking the lock per page.
    """

    PAGE = 1000

    def __init__(self, state: RepoState) -> None:
        self._state = state

    @contextmanager
    def _store(self) -> Iterator[Store]:
        with self._state.lock:
            try:
                yield self._state.store
            except SqliteError as exc:
                raise storage_error(exc, self._state.path) from None

    def get(self, cid: CID | str) -> bytes | None:
        """A block's bytes (checked against its CID), or None."""
        cid = parse_cid(cid)
        with self._store() as store:
            data = store.get_block(cid)
        if data is not None:
            verify_block(cid, data, self._where())
        return data

    def _where(self) -> str:
        return f"{self._state.path} (the store is damaged)"

    def has(self, cid: cbrrr.CID | str) -> bool:
        """True if the block is stored."""
        cid = parse_cid(cid)
        with self._store() as store:
            return store.has_block(cid)

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, (cbrrr.CID, str)) and self.has(cid)

    def put(self, data: bytes, cid: CID | str | None = None) -> CID:
        """Store a DAG-CBOR block; when ``cid`` is given the bytes must hash to it."""
        data = bytes(data)
        cbor.decode(data, "block")
        if cid is None:
            cid = cid_for_cbor(data)
        else:
            cid = parse_cid(cid, allow_raw=False)
            verify_block(cid, data)
        with self._store() as store, store.transaction():
            store.put_blocks([(cid, data)], self._state.rev)
        return cid

    def __iter__(self) -> Iterator[tuple[CID, bytes]]:
        """Every stored block as ``(cid, bytes)``, in CID order."""
        after = b""
        while True:
            with self._store() as store:
                page = store.blocks_after(after, self.PAGE)
            for cid, data in page:
                verify_block(cid, data, self._where())
            yield from page
            if len(page) < self.PAGE:
                return
            after = page[-1][0].cid_bytes

    def __len__(self) -> int:
        with self._store() as store:
            return store.count_blocks()
