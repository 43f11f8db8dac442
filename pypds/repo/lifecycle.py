"""Creating and opening repositories: the store, its metadata and the handle's first view of HEAD.

Traps: a create or ``from_car`` that fails leaves nothing behind, not even
the directories it made on the way (:func:`remove_store_files`); a store
written by an older pypds gets its paths index on first open.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..car.reader import CarSource
from ..car.stream import StreamedCar
from ..keys import PublicKey, SigningKey, generate_signing_key, load_signing_key
from ..limits import Limits
from ..mst import iter_range
from ..storage.store import SqliteError, Store, storage_error
from ..syntax import check_did
from ..tid import TidClock
from .importer import import_streamed
from .state import RepoState
from .writer import adopt, write_first_commit

__all__ = ["create_state", "from_car_state", "open_state"]


def create_state(
    path: str | os.PathLike,
    did: str,
    signing_key: SigningKey | bytes | str | None,
    store_key: bool | None,
    *,
    durability: str,
    busy_timeout: float,
    limits: Limits,
) -> RepoState:
    """See :meth:`pypds.Repo.create`."""
    check_did(did)
    directory = Path(path)
    key = generate_signing_key() if signing_key is None else load_signing_key(signing_key)
    keep_key = signing_key is None if store_key is None else store_key
    created = first_missing_dir(directory)
    store = Store.create(directory, durability=durability, busy_timeout=busy_timeout)
    try:
        with store.transaction():
            store.init_schema()
            init_meta(store, did, key, keep_key)
            state = RepoState(directory, store, signing_key=key, limits=limits)
            built = write_first_commit(state, key)
        adopt(state, built)
    except BaseException as exc:
        store.close()
        remove_store_files(directory, created)
        if isinstance(exc, SqliteError):
            raise storage_error(exc, directory) from None
        raise
    return state


def open_state(
    path: str | os.PathLike,
    signing_key: SigningKey | bytes | str | None,
    *,
    rotate_key: bool,
    durability: str,
    busy_timeout: float,
    limits: Limits,
) -> RepoState:
    """See :meth:`pypds.Repo.open`."""
    directory = Path(path)
    store = Store.open(directory, durability=durability, busy_timeout=busy_timeout)
    try:
        key = load_signing_key(signing_key) if signing_key is not None else stored_key(store)
        state = RepoState(directory, store, signing_key=key, limits=limits, rotate_key=rotate_key)
        with store.snapshot():
            state.refresh(force=True)
        if store.index_head() != state.head:  # written by an older pypds
            with store.transaction():
                state.refresh(force=True)
                store.index_replace(state.head, iter_range(state.nodes, state.root))
        state.blobs.remove_stale_temps()
    except BaseException as exc:
        store.close()
        if isinstance(exc, SqliteError):
            raise storage_error(exc, directory) from None
        raise
    return state


def from_car_state(
    path: str | os.PathLike,
    car: CarSource,
    key: PublicKey | SigningKey | str | None,
    signing_key: SigningKey | bytes | str | None,
    *,
    rotate_key: bool,
    durability: str,
    busy_timeout: float,
    limits: Limits,
) -> RepoState:
    """See :meth:`pypds.Repo.from_car`."""
    directory = Path(path)
    with StreamedCar(car, limits) as streamed:
        commit = streamed.commit()
        created = first_missing_dir(directory)
        store = Store.create(directory, durability=durability, busy_timeout=busy_timeout)
        try:
            signer = load_signing_key(signing_key) if signing_key is not None else None
            with store.transaction():
                store.init_schema()
                init_meta(store, commit.did, None, False)
                state = RepoState(directory, store, signing_key=signer, limits=limits, rotate_key=rotate_key)
                import_streamed(state, streamed, commit, key)
            state.refresh(force=True)
        except BaseException as exc:
            store.close()
            remove_store_files(directory, created)
            if isinstance(exc, SqliteError):
                raise storage_error(exc, directory) from None
            raise
    return state


def init_meta(store: Store, did: str, key: SigningKey | None, keep_key: bool) -> None:
    """A new store's metadata: its DID, a TID clock id, and the signing key if it is to be kept."""
    store.set_meta("did", did)
    store.set_meta("clock_id", TidClock().clock_id)
    if key is not None and keep_key:
        store.set_meta("signing_key", key.to_bytes().hex())
        store.set_meta("signing_curve", key.curve)


def stored_key(store: Store) -> SigningKey | None:
    """The signing key kept in the store, if any."""
    secret = store.get_meta("signing_key")
    if secret is None:
        return None
    return load_signing_key(str(secret), curve=str(store.get_meta("signing_curve") or "k256"))


def first_missing_dir(directory: Path) -> Path | None:
    """The outermost directory on the way to ``directory`` that does not exist yet."""
    missing = None
    current = directory.absolute()
    while not current.exists():
        missing = current
        current = current.parent
    return missing


def remove_store_files(directory: Path, created: Path | None) -> None:
    """Remove what a failed create left behind, including directories it made."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        target = directory / f"pds.db{suffix}"
        if target.exists():
            target.unlink()
    if created is not None and created.exists():
        shutil.rmtree(created)
