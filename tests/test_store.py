"""pds.db on disk: owner-only files whatever the umask, damaged stores and full disks give typed errors.

Each damage test breaks a store the way a bad disk, a crashed tool or a
stray ``sqlite3`` session would, then checks that the library raises a
:class:`PypdsError` (never a bare apsw, ``TypeError`` or ``UnicodeDecodeError``),
that the command line prints one ``pypds: ...`` line (never "internal
error"), and that the files are byte for byte what they were.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

import pypds.filesystem
from pypds import (
    CarReader,
    CarWriter,
    DiskFull,
    PypdsError,
    Repo,
    RepoExists,
    RepoNotFound,
    StoreDamaged,
    cid_for_raw,
)
from pypds.cli import main
from pypds.filesystem import TEMP_PREFIX
from pypds.storage.store import is_unfinished_create

from .conftest import DID, POST, post

# -- file modes ------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes_under(top: Path) -> dict[str, tuple[str, int]]:
    """``relative path -> ("dir" or "file", mode)`` for ``top`` and everything under it."""
    return {
        str(path.relative_to(top)): ("dir" if path.is_dir() else "file", mode(path)) for path in [top, *top.rglob("*")]
    }


def build(creator: str, root: Path, source_car: bytes) -> Repo:
    if creator == "create":
        return Repo.create(root, DID)
    return Repo.from_car(root, source_car, signing_key="11" * 32)


@pytest.fixture(scope="module")
def source_car(tmp_path_factory) -> bytes:
    with Repo.create(tmp_path_factory.mktemp("src") / "r", DID, signing_key="11" * 32) as repo:
        repo.put(POST, "first", post(0))
        return repo.export_car()


@pytest.mark.parametrize("creator", ["create", "from_car"])
@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o277])
def test_every_file_and_directory_pypds_creates_is_owner_only_whatever_the_umask(tmp_path, umask, creator, source_car):
    top = tmp_path / "made"
    old = os.umask(umask)
    try:
        with build(creator, top / "by" / "pypds", source_car) as repo:
            repo.put(POST, "a", post(1))
            repo.put_blob(b"blob bytes" * 100, "image/png")
            seen = modes_under(top)  # while open: -wal and -shm exist
    finally:
        os.umask(old)
    root = "by/pypds"
    assert {f"{root}/pds.db-wal", f"{root}/pds.db-shm"} <= seen.keys()
    files = {name: m for name, (kind, m) in seen.items() if kind == "file"}
    dirs = {name: m for name, (kind, m) in seen.items() if kind == "dir"}
    assert len(files) == 4 and set(files.values()) == {0o600}, files  # pds.db, -wal, -shm, the blob
    assert len(dirs) == 5 and set(dirs.values()) == {0o700}, dirs  # made/, by/, pypds/, blobs/, the shard


def test_an_existing_directory_keeps_its_mode(tmp_path):
    target = tmp_path / "shared"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    Repo.create(target, DID).close()
    assert mode(target) == 0o755
    assert mode(target / "pds.db") == 0o600


def test_opening_a_store_that_holds_a_key_takes_read_access_from_others(tmp_path):
    root = tmp_path / "old"
    with Repo.create(root, DID) as repo:  # the key is stored
        repo.put(POST, "a", post(1))
        for suffix in ("", "-wal", "-shm"):  # as an older pypds left them
            Path(f"{root / 'pds.db'}{suffix}").chmod(0o644)
        with Repo.open(root):
            assert {mode(Path(f"{root / 'pds.db'}{s}")) for s in ("", "-wal", "-shm")} == {0o600}


def test_a_store_without_a_key_keeps_the_mode_its_owner_gave_it(tmp_path, source_car):
    with Repo.from_car(tmp_path / "copy", source_car):
        pass
    (tmp_path / "copy" / "pds.db").chmod(0o644)  # shared on purpose: public data, no key
    Repo.open(tmp_path / "copy").close()
    assert mode(tmp_path / "copy" / "pds.db") == 0o644


def test_a_key_store_that_cannot_be_restricted_gives_a_warning(tmp_path, monkeypatch):
    Repo.create(tmp_path / "r", DID).close()
    (tmp_path / "r" / "pds.db").chmod(0o640)

    def refuse(self, mode):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(self))

    monkeypatch.setattr(Path, "chmod", refuse)
    with pytest.warns(UserWarning, match=r"holds a private signing key and is readable by other users.*mode 640"):
        Repo.open(tmp_path / "r").close()


def test_the_cli_shows_that_warning_on_one_line(tmp_path, monkeypatch, capsys):
    Repo.create(tmp_path / "r", DID).close()
    (tmp_path / "r" / "pds.db").chmod(0o644)
    monkeypatch.setattr(Path, "chmod", lambda self, mode: (_ for _ in ()).throw(PermissionError(1, "denied")))
    assert main(["head", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("pypds: warning: ") and err.count("\n") == 1, err


# -- damaged stores --------------------------------------------------------------------------

HEAD = "(SELECT value FROM meta WHERE key = 'head')"
A_RECORD = "(SELECT cid FROM paths ORDER BY path LIMIT 1)"

#: name -> (SQL that damages the store, whether Repo.open itself must fail)
DAMAGE = {
    "meta table dropped": ("DROP TABLE meta", True),
    "paths table dropped": ("DROP TABLE paths", True),
    "HEAD stored as text": ("UPDATE meta SET value = 'bafyreib' WHERE key = 'head'", True),
    "HEAD stored as an integer": ("UPDATE meta SET value = 42 WHERE key = 'head'", True),
    "HEAD not a CID": ("UPDATE meta SET value = X'0171' WHERE key = 'head'", True),
    "DID missing": ("DELETE FROM meta WHERE key = 'did'", True),
    "clock id stored as text": ("UPDATE meta SET value = 'x' WHERE key = 'clock_id'", True),
    "commit block stored as text": (f"UPDATE blocks SET data = CAST(data AS TEXT) WHERE cid = {HEAD}", True),
    "record block stored as text": (f"UPDATE blocks SET data = CAST(data AS TEXT) WHERE cid = {A_RECORD}", False),
    "record block stored as non-UTF-8 text": (f"UPDATE blocks SET data = X'ff' || data WHERE cid = {A_RECORD}", False),
    "record block stored as an integer": (f"UPDATE blocks SET data = 7 WHERE cid = {A_RECORD}", False),
    "index row with a text CID": (f"UPDATE paths SET cid = 'x' WHERE cid = {A_RECORD}", False),
    "ref with a text CID": ("INSERT INTO refs (name, cid) VALUES ('bad', 'x')", False),
}


def files_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def damaged(request, tmp_path) -> tuple[Path, bool]:
    sql, open_fails = DAMAGE[request.param]
    root = tmp_path / "repo"
    with Repo.create(root, DID) as repo:
        with repo.batch() as batch:
            for i in range(20):
                batch.put(POST, f"p{i:02d}", post(i))
        repo.set_ref("good", repo.head)
    conn = apsw.Connection(str(root / "pds.db"))
    conn.execute(sql)
    conn.close()
    return root, open_fails


def logical_content(root: Path) -> list:
    """Every row of every table of pds.db (as hex and SQL type, so no value is unreadable), read afresh."""
    conn = apsw.Connection(str(root / "pds.db"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        content = []
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            cells = ", ".join(f"hex({c}) || ':' || typeof({c})" for c in columns)
            content.append((table, sorted(conn.execute(f"SELECT {cells} FROM {table}").fetchall())))
        return content
    finally:
        conn.close()


def library_calls(repo: Repo, tmp_path: Path) -> list:
    return [
        lambda: repo.find(POST, "p00"),
        lambda: repo.list(POST),
        lambda: repo.export_car(),
        lambda: repo.export_car(tmp_path / "out.car"),
        lambda: list(repo.iter_car()),
        lambda: list(repo.blockstore),
        lambda: repo.list_refs(),
        lambda: repo.collections(),
        lambda: repo.verify(),
        lambda: repo.put(POST, "new", post(99)),
        lambda: repo.delete(POST, "p05"),
        lambda: repo.set_ref("another", repo.head),
        lambda: repo.gc(),
    ]


@pytest.mark.parametrize("damaged", list(DAMAGE), indirect=True)
def test_a_damaged_store_raises_typed_errors_and_a_failed_call_changes_nothing(damaged, tmp_path):
    root, open_fails = damaged
    before = files_digest(root)
    if open_fails:
        with pytest.raises(StoreDamaged, match="is damaged"):
            Repo.open(root)
        assert files_digest(root) == before
        return
    failures = 0
    with Repo.open(root) as repo:
        for call in library_calls(repo, tmp_path):
            content = logical_content(root)
            try:
                result = call()
            except PypdsError:
                failures += 1
                assert logical_content(root) == content
                continue
            failures += getattr(result, "ok", True) is False  # verify reports rather than raises
    assert failures >= 2  # a damaged block or row cannot hide from every reader


READ_COMMANDS = [["ls"], ["get", POST, "p00"], ["verify"], ["inspect"], ["collections"], ["mst"], ["ref", "ls"]]


@pytest.mark.parametrize("damaged", list(DAMAGE), indirect=True)
def test_the_cli_reports_a_damaged_store_in_one_line_and_changes_nothing(damaged, tmp_path, capsys):
    root, _open_fails = damaged
    before = files_digest(root)
    commands = [
        *([cmd[0], str(root), *cmd[1:]] if cmd[0] != "ref" else ["ref", "ls", str(root)] for cmd in READ_COMMANDS),
        ["export", str(root), "-o", str(tmp_path / "out.car")],
        ["rm", str(root), POST, "does-not-exist"],
    ]
    failed = 0
    for argv in commands:
        code = main(argv)
        out, err = capsys.readouterr()
        assert "internal error" not in err and "Traceback" not in err, (argv, err)
        if code != 0:
            failed += 1
            if argv[0] == "verify" and not err:
                assert code == 1 and "FAILED" in out  # the report says what failed
                continue
            assert err.startswith("pypds: ") and err.count("\n") == 1, (argv, err)
    assert failed >= 1
    assert files_digest(root) == before


def test_a_commit_block_with_the_wrong_type_is_named(tmp_path):
    with Repo.create(tmp_path / "r", DID) as repo:
        head = repo.head
    conn = apsw.Connection(str(tmp_path / "r" / "pds.db"))
    conn.execute(f"UPDATE blocks SET data = CAST(data AS TEXT) WHERE cid = {HEAD}")
    conn.close()
    with pytest.raises(StoreDamaged, match=f"block {head.encode()} is stored as str, not a BLOB"):
        Repo.open(tmp_path / "r")


@pytest.mark.parametrize("page", [2, 3, 5])
def test_a_corrupt_page_is_store_damaged(tmp_path, capsys, page):
    root = tmp_path / "r"
    with Repo.create(root, DID) as repo, repo.batch() as batch:
        for i in range(300):
            batch.put(POST, f"p{i:03d}", post(i))
    with open(root / "pds.db", "r+b") as db:
        db.seek((page - 1) * 4096)
        db.write(b"\xa5" * 4096)
    before = files_digest(root)
    with pytest.raises(StoreDamaged, match="malformed"), Repo.open(root) as repo:  # opening, or reading
        repo.export_car()
    code = main(["export", str(root), "-o", str(tmp_path / "out.car")])
    err = capsys.readouterr().err
    assert code == 1 and "is damaged" in err and err.count("\n") == 1, err
    assert files_digest(root) == before and not (tmp_path / "out.car").exists()


# -- a full disk -----------------------------------------------------------------------------


class _FullVFS(apsw.VFS):
    """The default VFS while installed: writes fail with SQLITE_FULL (what ENOSPC becomes) when ``full``."""

    def __init__(self) -> None:
        self.full = False
        super().__init__("pypds-test-full", "unix", makedefault=True)

    def xOpen(self, name, flags):
        return _FullFile(self, name, flags)


class _FullFile(apsw.VFSFile):
    def __init__(self, vfs: _FullVFS, name, flags) -> None:
        self._owner = vfs
        super().__init__("unix", name, flags)

    def xWrite(self, data, offset):
        if self._owner.full:
            raise apsw.FullError("no space left on device (simulated)")
        return super().xWrite(data, offset)


@pytest.fixture
def full_disk():
    vfs = _FullVFS()
    try:
        yield vfs
    finally:
        vfs.unregister()


@pytest.fixture
def enospc(monkeypatch):
    """File writes through pypds.filesystem fail with ENOSPC when fsynced (where delayed allocation fails)."""

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pypds.filesystem.os, "fsync", no_space)


def repo_state(repo: Repo) -> tuple:
    return repo.head, repo.rev, repo.export_car(), repo.list_refs(), len(repo.blockstore)


def test_commits_on_a_full_disk_raise_disk_full_and_change_nothing(tmp_path, full_disk):
    with Repo.create(tmp_path / "r", DID) as repo:
        repo.put(POST, "a", post(1))
        car = repo.export_car()
        before = repo_state(repo)
        full_disk.full = True
        attempts = [
            lambda: repo.put(POST, "b", {**post(2), "text": "x" * 20_000}),
            lambda: repo.delete(POST, "a"),
            lambda: repo.set_ref("r", repo.head),
            lambda: repo.import_car(car),
        ]
        for attempt in attempts:
            with pytest.raises(DiskFull, match="disk is full"), repo.batch() as batch:
                for i in range(300):
                    batch.put(POST, f"bulk{i}", post(i))
            with pytest.raises(DiskFull):
                attempt()
        full_disk.full = False
        assert repo_state(repo) == before
        repo.put(POST, "c", post(3))  # the handle is usable once there is space
        assert repo.verify().ok
    with Repo.open(tmp_path / "r") as repo:
        assert repo.find(POST, "c") == post(3) and repo.find(POST, "b") is None


def test_creating_a_repository_on_a_full_disk_leaves_nothing(tmp_path, full_disk):
    full_disk.full = True
    with pytest.raises(DiskFull):
        Repo.create(tmp_path / "new" / "r", DID)
    assert not (tmp_path / "new").exists()


def test_put_blob_on_a_full_disk_raises_disk_full_and_leaves_no_file(repo, enospc):
    data = os.urandom(10_000)
    with pytest.raises(DiskFull, match="No space left on device; nothing was written"):
        repo.put_blob(data, "image/png")
    assert repo.blob(cid_for_raw(data)) is None
    assert not [p for p in (repo.path / "blobs").rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_export_to_a_full_disk_raises_disk_full_and_leaves_no_file(repo, tmp_path, enospc):
    with pytest.raises(DiskFull):
        repo.export_car(tmp_path / "out.car")
    assert list(tmp_path.glob("*.car")) == [] and not list(tmp_path.glob(f"{TEMP_PREFIX}*"))


def test_the_cli_reports_a_full_disk_in_one_line_and_changes_nothing(tmp_path, full_disk, enospc, capsys):
    root = tmp_path / "r"
    Repo.create(root, DID).close()
    record = tmp_path / "post.json"
    record.write_text('{"$type": "app.bsky.feed.post", "text": "hi"}')
    blob = tmp_path / "cat.png"
    blob.write_bytes(b"\x89PNG" * 100)
    before = files_digest(root)
    full_disk.full = True
    for argv in (["put", root, POST, "a", record], ["blob", "put", root, blob], ["ref", "set", root, "x"]):
        assert main([str(a) for a in argv]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("pypds: ") and err.count("\n") == 1, err
        assert "No space left" in err or "disk is full" in err, err
    full_disk.full = False
    assert files_digest(root) == before


# -- a create killed before it committed ------------------------------------------------------


def _killed_from_car(target: Path, car: bytes, tmp_path: Path) -> None:
    """Start Repo.from_car in a child fed through a FIFO, let it begin writing, then SIGKILL it."""
    fifo = tmp_path / "car.fifo"
    os.mkfifo(fifo)
    code = f"from pypds import Repo; Repo.from_car({str(target)!r}, {str(fifo)!r})"
    child = subprocess.Popen([sys.executable, "-c", code])
    with CarReader(car) as reader:
        root, blocks = reader.roots[0], list(reader)
    stream = io.BytesIO()
    writer = CarWriter(stream, [root])
    writer.write_block(*blocks[0])  # the commit
    for _ in range(2):  # unreached padding: the reader reads 1 MiB at a time
        padding = os.urandom(600 << 10)
        writer.write_block(cid_for_raw(padding), padding)
    for block in blocks[1 : len(blocks) // 2]:
        writer.write_block(*block)
    try:
        with open(fifo, "wb") as feed:
            feed.write(stream.getvalue())  # the commit and part of the tree: then the child waits for more
            feed.flush()
            deadline = time.monotonic() + 20
            while not (target / "pds.db-wal").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            child.send_signal(signal.SIGKILL)
            child.wait(10)
    except BrokenPipeError:
        pass
    finally:
        child.kill()
        child.wait()
    assert (target / "pds.db").exists()


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_a_create_killed_before_it_committed_is_replaced_by_the_next_create(tmp_path):
    with Repo.create(tmp_path / "src", DID) as repo:
        with repo.batch() as batch:
            for i in range(300):
                batch.put(POST, f"p{i:03d}", post(i))
        car = repo.export_car()
        head = repo.head
    target = tmp_path / "copy"
    _killed_from_car(target, car, tmp_path)
    with pytest.raises(RepoNotFound, match="killed before it finished"):
        Repo.open(target)
    _age(target / "pds.db", 10)
    assert is_unfinished_create(target)
    with Repo.from_car(target, car) as copy:
        assert copy.head == head


def test_a_fresh_or_locked_schema_less_file_is_not_taken_for_an_abandoned_create(tmp_path):
    target = tmp_path / "r"
    target.mkdir()
    conn = apsw.Connection(str(target / "pds.db"))
    conn.execute("PRAGMA journal_mode = WAL")
    with pytest.raises(RepoExists):  # too young: a create may be between making the file and locking it
        Repo.create(target, DID)
    _age(target / "pds.db", 10)
    conn.execute("BEGIN IMMEDIATE")  # a live creator holds the write lock
    with pytest.raises(RepoExists):
        Repo.create(target, DID)
    conn.execute("ROLLBACK")
    conn.close()
    assert is_unfinished_create(target)
    with Repo.create(target, DID) as repo:
        assert repo.did == DID


def test_a_store_with_a_schema_is_never_taken_for_an_abandoned_create(tmp_path):
    with Repo.create(tmp_path / "r", DID):
        pass
    _age(tmp_path / "r" / "pds.db", 10)
    assert not is_unfinished_create(tmp_path / "r")
    with pytest.raises(RepoExists):
        Repo.create(tmp_path / "r", DID)
