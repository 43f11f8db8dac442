"""Crash safety: SIGKILL a writer at random moments, and blob-file integrity.

The quick kill loop lives here; the long one is ``python -m benchmarks.crash``
(both use ``tests/crash_harness.py``). A failure is a data-loss or corruption
bug in pypds: the message names the cycle, seed and in-flight operation, and
the repository is kept under /tmp/crash-failures/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import apsw
import pytest

import pypds.filesystem
import pypds.storage.blobs
from pypds import CID, BlockHashMismatch, DiskFull, Repo, cid_for_raw

from .conftest import DID, POST, post
from .crash_harness import PROJECT_ROOT, CrashCheckFailure, run_kill_cycles

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


# -- the kill loop ------------------------------------------------------------------------


def test_sigkill_cycles(tmp_path):
    """~12 random SIGKILLs of a writer doing puts, deletes, batches, blobs, imports and set_ref."""
    stats = run_kill_cycles(tmp_path / "crash", cycles=12, seed=20240601, min_delay=0.05, max_delay=0.6)
    print("\n" + stats.table())
    assert stats.failures == []
    assert stats.kills == stats.survived == 12
    assert stats.acked_ops > 0, "the writer never acknowledged an operation: the loop tested nothing"
    assert stats.checks["writable"] == 12
    assert stats.checks["final_sweep"] == 1


def _damage_db(repo_dir: Path, sql: str, *params) -> None:
    conn = apsw.Connection(str(repo_dir / "pds.db"))
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


def _stored(repo_dir: Path, cid: CID) -> bool:
    conn = apsw.Connection(str(repo_dir / "pds.db"))
    try:
        return conn.execute("SELECT 1 FROM blocks WHERE cid = ?", (cid.cid_bytes,)).fetchone() is not None
    finally:
        conn.close()


def _last(acks: list[dict], *ops: str) -> dict:
    return next(a for a in reversed(acks) if a["op"] in ops)


@pytest.mark.parametrize("damage", ["lost-commit", "lost-record", "head-rolled-back", "truncated-blob"])
def test_checks_catch_damage(tmp_path, damage):
    """The harness is not vacuous: damage done after a kill fails the run, with a clear message."""
    work, failures = tmp_path / "crash", tmp_path / "failures"

    def sabotage(repo_dir: Path, acks: list[dict]) -> None:
        if len(acks) < 3 or not any(a["op"] == "blob" for a in acks):
            return  # wait for a cycle with something to damage
        if damage == "lost-commit":
            cid = CID.decode(_last(acks, "put", "delete", "batch")["head"])
            _damage_db(repo_dir, "DELETE FROM blocks WHERE cid = ?", cid.cid_bytes)
        elif damage == "lost-record":
            ack = _last(acks, "put", "checker_put")
            _damage_db(repo_dir, "DELETE FROM blocks WHERE cid = ?", CID.decode(ack["cid"]).cid_bytes)
        elif damage == "head-rolled-back":
            ops = ("put", "delete", "batch", "checker_put", "create")
            older_heads = [a for a in reversed(acks) if a["op"] in ops and a["head"] != acks[-1]["head"]]
            stored = [a for a in older_heads if _stored(repo_dir, CID.decode(a["head"]))]  # not taken by a gc
            if not stored:
                return  # wait for a cycle with an older commit still stored
            older = stored[0]
            _damage_db(repo_dir, "UPDATE meta SET value = ? WHERE key = 'head'", CID.decode(older["head"]).cid_bytes)
            _damage_db(repo_dir, "UPDATE meta SET value = ? WHERE key = 'rev'", older["rev"])
        else:
            cid = _last(acks, "blob")["cid"]
            path = repo_dir / "blobs" / cid[:2] / cid
            path.write_bytes(path.read_bytes()[:-1] if path.stat().st_size else b"x")

    with pytest.raises(CrashCheckFailure) as info:
        run_kill_cycles(
            work, cycles=8, seed=7, min_delay=0.15, max_delay=0.3, after_kill=sabotage, failure_dir=failures
        )
    message = str(info.value)
    assert "seed 7" in message and "cycle " in message and "the writer was killed" in message
    expected = {
        "lost-commit": ("missing", "not stored", "no longer in the block store"),
        "lost-record": ("missing",),
        "head-rolled-back": ("head_not_lost",),
        "truncated-blob": ("blob",),
    }[damage]
    assert any(text in message for text in expected), message
    kept = list(failures.iterdir())
    assert len(kept) == 1 and (kept[0] / "repo" / "pds.db").is_file() and (kept[0] / "FAILURE.txt").is_file()


# -- deterministic kill points --------------------------------------------------------------

_KILL_AT = textwrap.dedent(
    """
    import os, signal, sys, json
    import pypds.storage.blobs, pypds.filesystem, pypds.storage.store
    from pypds import Repo

    repo_dir, point, car = sys.argv[1], sys.argv[2], sys.argv[3]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    repo = Repo.open(repo_dir)
    if point == "before-blob-rename":
        pypds.filesystem.os.replace = die
    elif point == "before-blob-dir-fsync":
        pypds.storage.blobs.fsync_dir = die
    elif point.startswith("set-head"):
        real = pypds.storage.store.Store.set_head
        def set_head(self, cid, rev):
            real(self, cid, rev)
            die()
        pypds.storage.store.Store.set_head = set_head
    print(json.dumps({"head": repo.head.encode()}), flush=True)
    if point in ("before-blob-rename", "before-blob-dir-fsync"):
        repo.put_blob(b"k" * 200_000, "image/png")
    elif point == "set-head-in-put":
        repo.put("app.bsky.feed.post", "killed", {"$type": "app.bsky.feed.post", "text": "x"})
    elif point == "set-head-in-batch":
        with repo.batch() as b:
            for i in range(30):
                b.put("app.bsky.feed.post", f"killed{i}", {"$type": "app.bsky.feed.post", "text": "x"})
    elif point == "set-head-in-import":
        repo.import_car(car)
    print("not killed", flush=True)
    """
)


@pytest.mark.parametrize(
    "point",
    ["before-blob-rename", "before-blob-dir-fsync", "set-head-in-put", "set-head-in-batch", "set-head-in-import"],
)
def test_sigkill_at_fixed_points(tmp_path, point):
    """SIGKILL at the worst moments: mid-transaction (after HEAD is written) and around the blob rename."""
    with Repo.create(tmp_path / "src", DID) as src:
        with src.batch() as b:
            for i in range(100):
                b.put(POST, f"src{i}", post(i))
        car = tmp_path / "src.car"
        src.export_car(car)
    with Repo.create(tmp_path / "repo", DID) as repo:
        repo.put(POST, "before", post(0))
        head, rev = repo.head, repo.rev
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_AT, str(tmp_path / "repo"), point, str(car)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)
    assert json.loads(proc.stdout.splitlines()[0]) == {"head": head.encode()}
    data = b"k" * 200_000
    final = tmp_path / "repo" / "blobs" / cid_for_raw(data).encode()[:2] / cid_for_raw(data).encode()
    with Repo.open(tmp_path / "repo") as repo:
        if point.startswith("set-head"):  # the transaction never committed: nothing of it is visible
            assert (repo.head, repo.rev) == (head, rev)
            assert repo.find(POST, "killed") is None and repo.find(POST, "killed0") is None
        if point == "before-blob-rename":
            assert not final.exists()
            assert repo.blob(cid_for_raw(data)) is None
        if point == "before-blob-dir-fsync":  # renamed but the directory not yet fsynced: complete or absent
            assert repo.blob(cid_for_raw(data)) in (None, data)
        repo._state.check_complete(repo.checkout().root)
        if hasattr(repo, "verify"):
            assert repo.verify().ok
        for name in os.listdir(tmp_path / "repo" / "blobs") if (tmp_path / "repo" / "blobs").exists() else []:
            for entry in (tmp_path / "repo" / "blobs" / name).iterdir():
                if not entry.name.startswith(".tmp-"):
                    assert cid_for_raw(entry.read_bytes()).encode() == entry.name
        # still writable, and the interrupted work can be redone
        repo.put(POST, "after", post(1))
        assert repo.put_blob(data, "image/png").cid == cid_for_raw(data)
        assert repo.blob(cid_for_raw(data)) == data
        repo.import_car(car)
        assert repo.find(POST, "src5") == post(5)


# -- blob files ---------------------------------------------------------------------------------


def _blob_path(repo: Repo, cid: CID) -> Path:
    name = cid.encode()
    return repo.path / "blobs" / name[:2] / name


@pytest.mark.parametrize(
    "damage",
    ["truncated", "truncated-to-empty", "altered-byte", "appended", "replaced-by-other-blob"],
)
def test_damaged_blob_file_raises_on_read(repo, damage):
    data = bytes(range(256)) * 100
    cid = repo.put_blob(data, "application/octet-stream").cid
    path = _blob_path(repo, cid)
    if damage == "truncated":
        path.write_bytes(data[:-1])
    elif damage == "truncated-to-empty":
        path.write_bytes(b"")
    elif damage == "altered-byte":
        path.write_bytes(data[:500] + bytes([data[500] ^ 1]) + data[501:])
    elif damage == "appended":
        path.write_bytes(data + b"\0")
    else:
        path.write_bytes(b"another blob")
    with pytest.raises(BlockHashMismatch) as info:
        repo.blob(cid)
    assert cid.encode() in str(info.value)
    # storing the blob again repairs the file
    assert repo.put_blob(data, "application/octet-stream").cid == cid
    assert repo.blob(cid) == data


def test_empty_blob_round_trips(repo):
    cid = repo.put_blob(b"", "application/octet-stream").cid
    assert repo.blob(cid) == b""
    _blob_path(repo, cid).write_bytes(b"\0")
    with pytest.raises(BlockHashMismatch):
        repo.blob(cid)


def _assert_no_blob_files(repo: Repo, cid: CID) -> None:
    assert not _blob_path(repo, cid).exists()
    shard = _blob_path(repo, cid).parent
    leftovers = [p.name for p in shard.iterdir()] if shard.exists() else []
    assert leftovers == [], f"files left behind after a failed put_blob: {leftovers}"
    assert repo.blob(cid) is None


def test_put_blob_interrupted_at_rename_leaves_nothing(repo, monkeypatch):
    data = os.urandom(50_000)
    cid = cid_for_raw(data)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(pypds.filesystem.os, "replace", broken_replace)
    with pytest.raises(DiskFull, match="No space left"):
        repo.put_blob(data, "image/png")
    monkeypatch.undo()
    _assert_no_blob_files(repo, cid)
    assert repo.put_blob(data, "image/png").cid == cid
    assert repo.blob(cid) == data


def test_put_blob_interrupted_mid_write_leaves_nothing(repo, monkeypatch):
    """The write itself fails half way: the partial bytes never appear under the final name."""
    data = os.urandom(300_000)
    cid = cid_for_raw(data)
    real_open = open

    class HalfWriter:
        def __init__(self, f):
            self._f = f

        def write(self, chunk):
            self._f.write(bytes(chunk)[: len(chunk) // 2])
            self._f.flush()
            raise OSError(5, "I/O error (simulated)")

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def half_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return HalfWriter(f) if "w" in mode else f

    monkeypatch.setattr(pypds.filesystem, "open", half_open, raising=False)
    with pytest.raises(OSError, match="simulated"):
        repo.put_blob(data, "image/png")
    monkeypatch.undo()
    _assert_no_blob_files(repo, cid)
    assert repo.put_blob(data, "image/png").cid == cid
    assert repo.blob(cid) == data


def test_put_blob_interrupted_at_fsync_leaves_nothing(repo, monkeypatch):
    data = os.urandom(10_000)
    cid = cid_for_raw(data)

    def broken_fsync(fd):
        raise OSError(5, "fsync failed (simulated)")

    monkeypatch.setattr(pypds.filesystem.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated"):
        repo.put_blob(data, "image/png")
    monkeypatch.undo()
    _assert_no_blob_files(repo, cid)


def test_group_commits_survive_kills_of_a_process_writing_from_eight_threads():
    """The short version of ``python -m benchmarks.crash_group`` (group commit under SIGKILL)."""
    root = Path(__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.crash_group", "--cycles", "3", "--threads", "8", "--seed", "7"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 of 3 kills survived" in result.stdout
