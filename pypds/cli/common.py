"""Shared pieces of the command line: errors, parameter types, sources, progress and output.

Nothing here holds state between invocations: every stream (stdin, stdout,
stderr) is looked up when it is used, so ``main()`` can be called repeatedly
from tests with captured streams.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click

from ..codec.cid import CID, parse_cid
from ..errors import InvalidCommit, LimitExceeded, MissingBlock, PypdsError
from ..filesystem import atomic_file
from ..keys import PublicKey, SigningKey, load_signing_key, parse_did_key
from ..repo.repo import Repo
from ..syntax import is_valid_did

F = TypeVar("F", bound=Callable[..., Any])

#: Environment variable holding a private key (hex) for writes, and for ``init``.
KEY_ENV = "PYPDS_SIGNING_KEY"
#: Largest key file read (a key is 64 hex characters; the cap keeps /dev/zero out).
MAX_KEY_FILE_BYTES = 4096
#: Largest JSON document read for a record (a record is at most 1 MiB of DAG-CBOR;
#: its JSON form, with base64 bytes and escapes, is larger).
MAX_JSON_INPUT_BYTES = 16 << 20
#: Largest blob read by ``blob put``.
MAX_BLOB_INPUT_BYTES = 256 << 20


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


@dataclass(frozen=True)
class Signer:
    """The key options of a command that signs commits: the key given (None: the stored one)
    and whether it may sign over a HEAD that another key signed."""

    key: SigningKey | None
    rotate: bool


def key_file_option(func: F) -> F:
    return click.option(
        "--signing-key-file",
        metavar="FILE",
        help="File holding the private key as 64 hex characters (keep it mode 0600).",
    )(func)


def signing_key_options(func: F) -> F:
    """The key options of a command that signs commits; the command receives them as ``signer: Signer``.

    The key comes from ``--signing-key-file``, else ``--signing-key``, else
    the environment (``PYPDS_SIGNING_KEY``), else the repository's stored key.
    """

    @functools.wraps(func)
    def wrapper(
        *args: Any, signing_key: str | None, signing_key_file: str | None, curve: str, rotate_key: bool, **kwargs: Any
    ) -> Any:
        key = given_key(signing_key, signing_key_file, curve, "signing_key")
        return func(*args, signer=Signer(key, rotate_key), **kwargs)

    options = [
        click.option(
            "--rotate-key",
            is_flag=True,
            help="Sign even though HEAD was signed by another key: the history then verifies against two keys.",
        ),
        click.option(
            "--curve",
            type=click.Choice(["k256", "p256"]),
            default="k256",
            show_default=True,
            help="Curve of the given key.",
        ),
        key_file_option,
        click.option(
            "--signing-key",
            metavar="HEX",
            envvar=KEY_ENV,
            help=f"Private key (64 hex characters) to sign with instead of the stored one (env {KEY_ENV}). "
            "Prefer --signing-key-file or the environment: other users can read command lines (ps).",
        ),
    ]
    for option in options:
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


def given_key(hex_key: str | None, key_file: str | None, curve: str, hex_param: str) -> SigningKey | None:
    """The key from a key file or hex (an option or the environment); a file given on the
    command line wins over the environment, but not over a hex key also given there."""
    option = "--signing-key" if hex_param == "signing_key" else "--key"
    if key_file is not None and hex_key is not None:
        source = click.get_current_context().get_parameter_source(hex_param)
        if source is not click.core.ParameterSource.ENVIRONMENT:
            raise click.UsageError(f"give the key once: --signing-key-file or {option} HEX, not both")
    if key_file is not None:
        return _parse_key(read_key_file(key_file), curve, "'--signing-key-file'")
    if hex_key is not None:
        return _parse_key(hex_key, curve, f"'{option}'")
    return None


def env_key(curve: str) -> SigningKey | None:
    """The key in ``PYPDS_SIGNING_KEY``, if set."""
    value = os.environ.get(KEY_ENV)
    return None if value is None else _parse_key(value, curve, KEY_ENV)


def _parse_key(text: str, curve: str, where: str) -> SigningKey:
    try:
        return load_signing_key(text.strip(), curve=curve)
    except PypdsError as exc:  # the message never quotes the key
        raise click.BadParameter(str(exc), param_hint=where) from None


def read_key_file(name: str) -> str:
    """The text of a key file (at most MAX_KEY_FILE_BYTES); warns if other users may read it."""
    try:
        with open(name, "rb") as stream:  # may be a pipe: --signing-key-file <(pass show alice)
            raw = stream.read(MAX_KEY_FILE_BYTES + 1)
            info = os.fstat(stream.fileno())
    except OSError as exc:
        raise InputError(f"key file {name}: {exc.strerror}") from None
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISREG(info.st_mode):
        mode = 0  # a pipe or a device: nobody else reads what was read from it
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise InputError(f"key file {name} is longer than {MAX_KEY_FILE_BYTES} bytes: not a key")
    if mode & 0o077:
        warn(f"key file {name} is readable by other users (mode {mode:o}): chmod 600 {name}")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise InputError(f"key file {name} is not text: it must hold 64 hex characters") from None


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    click.echo(f"pypds: warning: {message}", err=True)


# -- repositories and sources ------------------------------------------------------


def open_repo(path: str, *, signer: Signer | None = None) -> Repo:
    """Open the repository directory at ``path``, with errors that name the problem.

    With ``signer`` the repository is opened to sign commits: it must have a
    key, and a key that did not sign HEAD needs ``--rotate-key`` (and is
    then warned about).
    """
    where = Path(path)
    if path == "-" or where.is_file():
        raise InputError(f"{path} is not a repository directory (this command needs one, not a CAR)")
    if not where.exists():
        raise InputError(f"no repository at {path}: no such directory")
    if signer is None:
        return Repo.open(where)
    repo = Repo.open(where, signing_key=signer.key, rotate_key=signer.rotate)
    try:
        _check_signer(repo, path, signer)
    except BaseException:
        repo.close()
        raise
    return repo


def _check_signer(repo: Repo, path: str, signer: Signer) -> None:
    if repo.signing_key is None:
        raise InputError(
            f"repository at {path} has no signing key (imported from a CAR?): "
            f"pass --signing-key-file FILE or set {KEY_ENV}"
        )
    if repo.signing_key_matches_head():
        return
    change = f"HEAD of {path} was not signed by {repo.did_key}: a commit signed by it leaves a history that verifies"
    if not signer.rotate:
        raise InputError(f"{change} against two keys; pass --rotate-key to do that on purpose")
    warn(f"{change} against two keys (--rotate-key)")


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


def read_capped(name: str, cap: int, limit: str) -> bytes:
    """All of a file or ``-`` (stdin), refused with LimitExceeded past ``cap`` bytes (never read further)."""
    with open_input(name) as (stream, _size):
        raw = stream.read(cap + 1)
    if len(raw) > cap:
        raise LimitExceeded(limit, len(raw), cap, "stdin" if name == "-" else name)
    return raw


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


def resolve_commit(repo: Repo, spec: str, where: str | None = None) -> CID:
    """``HEAD``, a ref name or a commit CID of ``repo``; an unknown or non-commit CID is an input error.

    ``where`` names the repository in messages (default its path).
    """
    where = str(repo.path) if where is None else where
    if spec == "HEAD":
        return repo.head
    named = repo.ref(spec) if spec and spec.isprintable() and len(spec) <= 256 else None
    if named is not None:
        return named
    try:
        cid = parse_cid(spec, allow_raw=False)
    except PypdsError:
        raise InputError(f"{spec!r} is neither HEAD, a ref of {where} nor a commit CID") from None
    try:
        repo.commit(cid)
    except MissingBlock:
        raise InputError(f"no commit {spec} in {where}") from None
    except InvalidCommit:
        raise InputError(f"{spec} is not a commit") from None
    return cid


@dataclass(frozen=True)
class CommitChoice:
    """The commit a read command reads: ``--commit`` (a CID, a ref name or HEAD), ``--ref`` (a ref
    name only), or neither (HEAD)."""

    commit: str | None
    ref: str | None

    def resolve(self, repo: Repo, where: str) -> CID | None:
        """The chosen commit of ``repo`` (None for HEAD); unknown ones are input errors naming ``where``."""
        if self.ref is not None:
            cid = repo.ref(self.ref)
            if cid is None:
                known = ", ".join(name for name, _cid in repo.list_refs()) or "none"
                raise InputError(f"no ref named {self.ref!r} in {where} (refs: {known})")
            return cid
        return None if self.commit is None else resolve_commit(repo, self.commit, where)


def commit_options(func: F) -> F:
    """``--commit CID`` / ``--ref NAME`` on a read command; it receives them as ``at: CommitChoice``."""

    @functools.wraps(func)
    def wrapper(*args: Any, commit_spec: str | None, ref_name: str | None, **kwargs: Any) -> Any:
        if commit_spec is not None and ref_name is not None:
            raise click.UsageError("give --commit or --ref, not both")
        return func(*args, at=CommitChoice(commit_spec, ref_name), **kwargs)

    wrapper = click.option("--ref", "ref_name", metavar="NAME", help="Read the commit this named ref points to.")(
        wrapper
    )
    wrapper = click.option(
        "--commit",
        "commit_spec",
        metavar="CID",
        help="Read this stored commit instead of HEAD (a ref name works too).",
    )(wrapper)
    return wrapper  # type: ignore[return-value]


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

    @contextmanager
    def stages(self, verb: str) -> Iterator[Callable[[str, int, int | None], None]]:
        """A ``progress(stage, done, total)`` callback: one counting bar per stage, ``"<stage> ..."``."""
        if not self.enabled:
            yield lambda _stage, _done, _total: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
        with RichProgress(*columns, TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
            tasks: dict[str, Any] = {}

            def update(stage: str, done: int, total: int | None) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(f"{stage} {verb}", total=total)
                bar.update(tasks[stage], completed=done, total=total)

            yield update


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


def print_info(info: dict, as_json: bool) -> None:
    """A command's result: JSON, or ``name  value`` rows (None shown as ``-``)."""
    if as_json:
        emit_json(info)
    else:
        print_rows([(name, "-" if value is None else str(value)) for name, value in info.items()])


def print_rows(rows: Sequence[tuple[str, ...]], styles: dict[int, Callable[[str], str]] | None = None) -> None:
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
    raw = read_capped(name, MAX_JSON_INPUT_BYTES, "max_json_input_bytes")
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
