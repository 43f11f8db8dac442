"""Shared pieces of the command line: errors, parameter types, sources, progress and output.

Nothing here holds state between invocations: every stream (stdin, stdout,
stderr) is looked up when it is used, so ``main()`` can be called repeatedly
from tests with captured streams.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click

from ..cid import CID, parse_cid
from ..errors import InvalidCommit, MissingBlock, PypdsError
from ..files import atomic_file
from ..keys import PublicKey, SigningKey, load_signing_key, parse_did_key
from ..repo import Repo
from ..syntax import is_valid_did

F = TypeVar("F", bound=Callable[..., Any])


class InputError(click.ClickException):
    """A usage or input problem found by the command line itself (exit status 2)."""

    exit_code = 2


# -- parameter types -----------------------------------------------------------


class CidType(click.ParamType):
    """A CID string (base32 CIDv1): a typo is a usage error, not an integrity failure."""

    name = "CID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> CID:
        if isinstance(value, CID):
            return value
        try:
            return parse_cid(value)
        except PypdsError as exc:
            self.fail(str(exc), param, ctx)


class DidType(click.ParamType):
    name = "DID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not is_valid_did(value):
            self.fail(f"not a valid DID: {value!r}", param, ctx)
        return value


class DidKeyType(click.ParamType):
    """A ``did:key:z...`` public key."""

    name = "DIDKEY"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> PublicKey:
        if isinstance(value, PublicKey):
            return value
        try:
            return parse_did_key(value)
        except PypdsError as exc:
            self.fail(str(exc), param, ctx)


CID_TYPE = CidType()
DID_TYPE = DidType()
DIDKEY_TYPE = DidKeyType()


# -- shared options ------------------------------------------------------------


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(func)


def quiet_option(func: F) -> F:
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar.")(func)


def full_cids_option(func: F) -> F:
    return click.option("--full-cids", is_flag=True, help="Print whole CIDs instead of shortened ones.")(func)


def signing_key_options(func: F) -> F:
    """``--signing-key`` / ``--curve`` for writes to a repository that stores no key."""
    func = click.option(
        "--curve",
        type=click.Choice(["k256", "p256"]),
        default="k256",
        show_default=True,
        help="Curve of a hex --signing-key.",
    )(func)
    return click.option(
        "--signing-key",
        metavar="HEX",
        envvar="PYPDS_SIGNING_KEY",
        help="Private key (64 hex characters) to sign with, needed when the repository stores none; "
        "overrides a stored key (env PYPDS_SIGNING_KEY).",
    )(func)


def load_key(hex_key: str | None, curve: str) -> SigningKey | None:
    if hex_key is None:
        return None
    try:
        return load_signing_key(hex_key.strip(), curve=curve)
    except PypdsError as exc:
        raise click.BadParameter(str(exc), param_hint="'--signing-key'") from None


# -- repositories and sources ------------------------------------------------------


def open_repo(path: str, *, signing_key: SigningKey | None = None, writable: bool = False) -> Repo:
    """Open the repository directory at ``path``, with errors that name the problem."""
    where = Path(path)
    if path == "-" or where.is_file():
        raise InputError(f"{path} is not a repository directory (this command needs one, not a CAR)")
    if not where.exists():
        raise InputError(f"no repository at {path}: no such directory")
    repo = Repo.open(where, signing_key=signing_key)
    if writable and repo.signing_key is None:
        repo.close()
        raise InputError(
            f"repository at {path} has no signing key (imported from a CAR?): "
            "pass --signing-key HEX or set PYPDS_SIGNING_KEY"
        )
    return repo


@dataclass
class Source:
    """A repository to read: a directory, or a CAR loaded (fully verified) into a temporary one."""

    name: str
    kind: str  # "repo" or "car"
    repo: Repo
    car_bytes: int | None = None  # bytes read from the CAR


def rev_text(rev: str | None) -> str:
    """A commit's rev for display; a version 2 commit has none."""
    return "none (version 2 commit)" if rev is None else rev


_SQLITE_MAGIC = b"SQLite format 3\x00"


@contextmanager
def open_input(name: str) -> Iterator[tuple[BinaryIO, int | None]]:
    """A binary input stream for a file name or ``-`` (stdin), and its size when known."""
    if name == "-":
        yield sys.stdin.buffer, None
        return
    path = Path(name)
    if path.is_dir():
        raise InputError(f"{name} is a directory, not a file")
    if not path.exists():
        raise InputError(f"{name}: no such file or directory")
    with open(path, "rb") as stream:
        if stream.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC:
            raise InputError(f"{name} is a SQLite database, not a CAR: pass the repository directory ({path.parent})")
        stream.seek(0)
        yield stream, os.fstat(stream.fileno()).st_size


@contextmanager
def open_source(name: str, progress: Progress) -> Iterator[Source]:
    """Open a repository directory, or load a CAR file (``-``: stdin) into a temporary repository.

    A CAR goes through :meth:`Repo.from_car`, so it is fully verified (block
    hashes, commit, the whole MST, every record) before any command sees
    it, and every command then runs the same code for both kinds of source.
    """
    if name != "-" and Path(name).is_dir():
        with open_repo(name) as repo:
            yield Source(name, "repo", repo)
        return
    with open_input(name) as (stream, size), tempfile.TemporaryDirectory(prefix="pypds-") as tmp:
        label = "stdin" if name == "-" else Path(name).name
        with progress.reading(stream, f"loading {label}", size) as reader:
            repo = Repo.from_car(Path(tmp) / "repo", reader, durability="normal")
        with repo:
            yield Source(name, "car", repo, reader.count)


def resolve_commit(repo: Repo, spec: str) -> CID:
    """``HEAD``, a ref name or a commit CID of ``repo``; an unknown or non-commit CID is an input error."""
    if spec == "HEAD":
        return repo.head
    named = repo.ref(spec) if spec and spec.isprintable() and len(spec) <= 256 else None
    if named is not None:
        return named
    try:
        cid = parse_cid(spec, allow_raw=False)
    except PypdsError:
        raise InputError(f"{spec!r} is neither HEAD, a ref of {repo.path} nor a commit CID") from None
    try:
        repo.commit(cid)
    except MissingBlock:
        raise InputError(f"no commit {spec} in {repo.path}") from None
    except InvalidCommit:
        raise InputError(f"{spec} is not a commit") from None
    return cid


# -- progress ------------------------------------------------------------------


class _Counter:
    """A stream wrapper counting the bytes that pass, reporting them to a progress bar."""

    def __init__(self, stream: BinaryIO, advance: Callable[[int], None] | None) -> None:
        self._stream = stream
        self._advance = advance
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._moved(len(data))
        return data

    def write(self, data: bytes) -> int:
        self._stream.write(data)
        self._moved(len(data))
        return len(data)

    def flush(self) -> None:
        self._stream.flush()

    def _moved(self, size: int) -> None:
        self.count += size
        if self._advance is not None:
            self._advance(size)


class Progress:
    """Progress bars on stderr, shown only on a terminal and never with --quiet.

    Every method works the same with bars off (byte counts are still kept),
    so commands never check whether progress is shown.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @classmethod
    def create(cls, quiet: bool) -> Progress:
        return cls(not quiet and sys.stderr.isatty())

    @contextmanager
    def _bar(self, description: str, total: int | None, *, bytes_: bool) -> Iterator[Callable[[int], None] | None]:
        if not self.enabled:
            yield None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        columns: list = [SpinnerColumn(), TextColumn("{task.description}")]
        if bytes_:
            columns += [BarColumn(), DownloadColumn(), TransferSpeedColumn()]
        elif total is not None:
            columns += [BarColumn(), MofNCompleteColumn()]
        columns.append(TimeRemainingColumn() if total is not None else TimeElapsedColumn())
        with RichProgress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)

    @contextmanager
    def reading(self, stream: BinaryIO, description: str, total: int | None = None) -> Iterator[_Counter]:
        with self._bar(description, total, bytes_=True) as advance:
            yield _Counter(stream, advance)

    @contextmanager
    def writing(self, stream: BinaryIO, description: str) -> Iterator[_Counter]:
        with self._bar(description, None, bytes_=True) as advance:
            yield _Counter(stream, advance)

    @contextmanager
    def steps(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        with self._bar(description, total, bytes_=False) as advance:
            yield advance or (lambda n: None)


# -- output --------------------------------------------------------------------


def echo(text: str = "") -> None:
    click.echo(text)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def short_cid(cid: CID | str | None, full: bool = False) -> str:
    """A CID shortened to its first 8 and last 4 characters (``-`` for none)."""
    if cid is None:
        return "-"
    text = cid if isinstance(cid, str) else cid.encode()
    return text if full or len(text) <= 16 else f"{text[:8]}…{text[-4:]}"


def cid_str(cid: CID | None) -> str | None:
    return None if cid is None else cid.encode()


def print_rows(rows: list[tuple[str, ...]], styles: dict[int, Callable[[str], str]] | None = None) -> None:
    """Print rows as aligned columns (two spaces apart; the last column is not padded)."""
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(len(row) for row in rows))]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            pad = "" if i == len(row) - 1 else " " * (widths[i] - len(cell))
            cells.append((styles[i](cell) if styles and i in styles and cell else cell) + pad)
        click.echo("  ".join(cells).rstrip())


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@contextmanager
def binary_output(target: str | None, what: str) -> Iterator[BinaryIO]:
    """A binary output: stdout for None or ``-`` (never a terminal), else a file written atomically."""
    if target is None or target == "-":
        out = sys.stdout.buffer
        if out.isatty():
            raise InputError(f"refusing to write {what} to a terminal: use -o FILE or redirect stdout")
        yield out
        out.flush()
        return
    path = Path(target)
    if path.is_dir():
        raise InputError(f"{target} is a directory")
    if not path.absolute().parent.is_dir():
        raise InputError(f"cannot write {target}: directory {path.absolute().parent} does not exist")
    with atomic_file(path) as stream:
        yield stream


def read_json_input(name: str) -> Any:
    """Parse JSON from a file or ``-``, refusing duplicate keys; errors name the place."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise InputError(f"{label}: duplicate key {key!r} in a JSON object")
            out[key] = value
        return out

    label = "stdin" if name == "-" else name
    with open_input(name) as (stream, _size):
        raw = stream.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{label}: not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise InputError(f"{label}: invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InputError(f"{label}: invalid JSON: nested too deeply") from None
