"""Commands on records: ls, get, collections, dump, unpack, put, rm, load."""

from __future__ import annotations

import json
import sys
from collections import (
    Counter,
)
from pathlib import (
    Path,
)

import click

from ..codec import (
    cbor,
)
from ..codec.atjson import (
    from_json,
    to_json,
)
from ..codec.cid import (
    CID,
)
from ..errors import (
    RecordNotFound,
    counted,
)
from ..repo.repo import (
    Repo,
)
from .common import (
    CommitChoice,
    InputError,
    Progress,
    Signer,
    commit_options,
    echo,
    emit_json,
    json_option,
    open_input,
    open_repo,
    open_source,
    print_info,
    print_rows,
    quiet_option,
    read_json_input,
    signing_key_options,
)


@click.command("ls", short_help="List record paths and CIDs.")
@click.argument("src")
@click.argument("collection", required=False)
@click.option("--limit", type=click.IntRange(min=0), help="Print at most this many records.")
@click.option("--cursor", metavar="RKEY", help="Start after this record key (needs COLLECTION).")
@click.option("--reverse", is_flag=True, help="Largest key first.")
@commit_options
@json_option
@quiet_option
def ls_cmd(
    src: str,
    collection: str | None,
    limit: int | None,
    cursor: str | None,
    reverse: bool,
    at: CommitChoice,
    as_json: bool,
    quiet: bool,
) -> None:
    """List record paths and their CIDs, in key order.

    SRC is a repository directory or a CAR file (- for stdin). With
    COLLECTION only that collection is listed; with --commit or --ref, an
    older commit's records.

    \b
    Examples:
      pypds ls ./alice app.bsky.feed.post --limit 10
      pypds ls ./alice --ref before-cleanup
    """
    if cursor is not None and collection is None:
        raise click.UsageError("--cursor needs a COLLECTION")
    with open_source(src, Progress.create(quiet)) as source:
        repo = source.repo
        commit = at.resolve(repo, src)
        if collection is not None:
            listed = repo.list(collection, limit=limit, cursor=cursor, reverse=reverse, commit=commit)
            rows = [(f"{collection}/{rkey}", cid) for rkey, cid in listed]
            if not rows and cursor is None and limit != 0:
                _check_collection(repo, collection, commit, src)
        else:
            rows = []
            for path, cid in repo.checkout(commit).items(reverse=reverse):
                if limit is not None and len(rows) >= limit:
                    break
                rows.append((path, cid))
    if as_json:
        emit_json([_path_json(path, cid) for path, cid in rows])
    else:
        print_rows([(path, cid.encode()) for path, cid in rows])


def _check_collection(repo: Repo, collection: str, commit: CID | None, src: str) -> None:
    """InputError unless ``collection`` holds records at the commit read (a listing found none)."""
    known = repo.collections(commit=commit)
    if collection not in known:
        raise InputError(f"no collection {collection} in {src} (collections: {', '.join(known) or 'none'})")


def _path_json(path: str, cid: CID) -> dict:
    collection, rkey = path.split("/", 1)
    return {"path": path, "collection": collection, "rkey": rkey, "cid": cid.encode()}


@click.command("collections", short_help="List collections with record counts.")
@click.argument("src")
@commit_options
@json_option
@quiet_option
def collections_cmd(src: str, at: CommitChoice, as_json: bool, quiet: bool) -> None:
    """List the collections that hold records, with their record counts.

    \b
    Example:
      pypds collections alice.car
    """
    with open_source(src, Progress.create(quiet)) as source:
        tree = source.repo.checkout(at.resolve(source.repo, src))
        counts = Counter(path.split("/", 1)[0] for path, _cid in tree.items())
    if as_json:
        emit_json([{"collection": name, "records": counts[name]} for name in sorted(counts)])
    else:
        print_rows([(name, str(counts[name])) for name in sorted(counts)])


@click.command("get", short_help="Print one record as atproto JSON.")
@click.argument("src")
@click.argument("collection")
@click.argument("rkey")
@click.option("--json", "as_json", is_flag=True, help='Wrap the record: {"path", "cid", "value"}.')
@commit_options
@quiet_option
def get_cmd(src: str, collection: str, rkey: str, as_json: bool, at: CommitChoice, quiet: bool) -> None:
    """Print one record as atproto JSON ($link for CIDs, $bytes for bytes).

    \b
    Examples:
      pypds get ./alice app.bsky.feed.post 3jui7kd54zh2y
      pypds get ./alice app.bsky.feed.post 3jui7kd54zh2y --ref before-cleanup
    """
    with open_source(src, Progress.create(quiet)) as source:
        repo = source.repo
        commit = at.resolve(repo, src)
        cid = repo.find_cid(collection, rkey, commit=commit)
        value = repo.find(collection, rkey, commit=commit)
    if cid is None or value is None:
        where = src if commit is None else f"{src} at {commit.encode()}"
        raise RecordNotFound(f"no record at {collection}/{rkey} in {where}")
    if as_json:
        emit_json({"path": f"{collection}/{rkey}", "cid": cid.encode(), "value": to_json(value)})
    else:
        emit_json(to_json(value))


@click.command("unpack", short_help="Write every record as a JSON file.")
@click.argument("src")
@click.option("-o", "--output", "out_dir", required=True, metavar="DIR", help="Directory to write into.")
@click.option("--force", is_flag=True, help="Write into a directory that is not empty.")
@commit_options
@json_option
@quiet_option
def unpack_cmd(src: str, out_dir: str, force: bool, at: CommitChoice, as_json: bool, quiet: bool) -> None:
    """Write every record as DIR/<collection>/<rkey>.json, plus DIR/_commit.json.

    `pypds load PATH DIR` writes such a directory back into a repository.

    \b
    Example:
      pypds unpack alice.car -o alice-records/
    """
    target = Path(out_dir)
    if out_dir == "-":
        raise click.BadParameter("unpack writes a directory, not stdout", param_hint="'-o'")
    if target.exists() and not target.is_dir():
        raise InputError(f"{out_dir} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise InputError(f"{out_dir} is not empty (use --force to write into it)")
    progress = Progress.create(quiet)
    counts: Counter = Counter()
    with open_source(src, progress) as source:
        repo = source.repo
        head = at.resolve(repo, src) or repo.head
        total = len(repo.checkout(head)) if progress.enabled else None
        target.mkdir(parents=True, exist_ok=True)
        _write_json(target / "_commit.json", cbor.decode(repo.blockstore.get(head) or b"", "commit"))
        with progress.steps("unpacking", total) as advance:
            for path, _cid, value in repo.records(commit=head):
                collection, rkey = path.split("/", 1)
                folder = target / collection
                if collection not in counts:
                    folder.mkdir(exist_ok=True)
                _write_json(folder / f"{rkey}.json", value)
                counts[collection] += 1
                advance(1)
    records = sum(counts.values())
    if as_json:
        emit_json({"dir": out_dir, "commit": head.encode(), "records": records, "collections": dict(counts)})
    else:
        what = f"{counted(records, 'record')} in {counted(len(counts), 'collection')}"
        echo(f"unpacked {what} to {out_dir} (commit {head.encode()})")


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(to_json(value), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@click.command("put", short_help="Create or replace a record from JSON.")
@click.argument("path")
@click.argument("collection")
@click.argument("rkey")
@click.argument("file", metavar="FILE|-")
@signing_key_options
@json_option
def put_cmd(path: str, collection: str, rkey: str, file: str, signer: Signer, as_json: bool) -> None:
    """Create or replace a record from atproto JSON (a file, or - for stdin), in one signed commit.

    Links are {"$link": "bafy..."}, bytes {"$bytes": "<base64>"}; floats are refused.

    \b
    Example:
      echo '{"$type": "app.bsky.feed.post", "text": "hi", "createdAt": "2024-01-01T00:00:00Z"}' \\
        | pypds put ./alice app.bsky.feed.post 3jui7kd54zh2y -
    """
    record = from_json(read_json_input(file))
    with open_repo(path, signer=signer) as repo:
        cid = repo.put(collection, rkey, record)
        info = {"path": f"{collection}/{rkey}", "cid": cid.encode(), "commit": repo.head.encode(), "rev": repo.rev}
    print_info(info, as_json)


@click.command("rm", short_help="Delete records.")
@click.argument("path")
@click.argument("collection")
@click.argument("rkeys", metavar="RKEY...", nargs=-1, required=True)
@signing_key_options
@json_option
def rm_cmd(path: str, collection: str, rkeys: tuple[str, ...], signer: Signer, as_json: bool) -> None:
    """Delete one or more records of a collection, all in one signed commit.

    If any of them does not exist, nothing is deleted.

    \b
    Example:
      pypds rm ./alice app.bsky.feed.post 3jui7kd54zh2y 3jui7kd54zh3a
    """
    keys = list(dict.fromkeys(rkeys))  # a key given twice is deleted once
    with open_repo(path, signer=signer) as repo:
        with repo.batch() as batch:
            for rkey in keys:
                batch.delete(collection, rkey)
        paths = [f"{collection}/{rkey}" for rkey in keys]
        commit, rev = repo.head.encode(), repo.rev
    if as_json:
        emit_json({"paths": paths, "commit": commit, "rev": rev})
    else:
        print_rows([*(("path", p) for p in paths), ("commit", commit), ("rev", str(rev))])


@click.command("dump", short_help="Print every record as JSON Lines.")
@click.argument("src")
@click.argument("collection", required=False)
@commit_options
@quiet_option
def dump_cmd(src: str, collection: str | None, at: CommitChoice, quiet: bool) -> None:
    """Print every record (or every record of COLLECTION) as JSON Lines, in key order.

    Each line is {"path", "cid", "value"} with the value in atproto JSON:
    what `pypds load` reads back. Records are read a page at a time, so
    memory does not grow with the repository.

    \b
    Examples:
      pypds dump ./alice > alice.jsonl
      pypds dump alice.car app.bsky.feed.post
    """
    with open_source(src, Progress.create(quiet)) as source:
        repo = source.repo
        commit = at.resolve(repo, src)
        count = 0
        for path, cid, value in repo.records(collection, commit=commit):
            click.echo(json.dumps({"path": path, "cid": cid.encode(), "value": to_json(value)}, ensure_ascii=False))
            count += 1
        if collection is not None and not count:
            _check_collection(repo, collection, commit, src)


@click.command("load", short_help="Write many records from JSON Lines or a directory.")
@click.argument("path")
@click.argument("src", metavar="SRC|-")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    metavar="N",
    help="Commit every N writes (each a signed commit; memory holds one batch) instead of all in one commit.",
)
@signing_key_options
@json_option
@quiet_option
def load_cmd(path: str, src: str, batch_size: int | None, signer: Signer, as_json: bool, quiet: bool) -> None:
    """Write many records in one signed commit (or one per --batch-size N writes).

    SRC is JSON Lines (a file, or - for stdin) or a directory laid out as
    `pypds unpack` writes it (DIR/<collection>/<rkey>.json). A line puts a
    record, {"collection", "rkey", "value"} or {"path", "value"} (the value
    in atproto JSON; a "cid", as `pypds dump` prints, must match it), or
    deletes one, {"delete": "collection/rkey"}. Every line is checked
    before anything is written: one bad line stops the load with its line
    number and writes nothing.

    \b
    Examples:
      pypds dump alice.car | pypds load ./bob -
      pypds unpack alice.car -o alice-records && pypds load ./bob alice-records --batch-size 1000
    """
    progress = Progress.create(quiet)
    with open_repo(path, signer=signer) as repo, progress.stages("records") as report:
        if src == "-":
            result = repo.load(sys.stdin.buffer, batch_size=batch_size, name="stdin", progress=report)
        elif Path(src).is_dir():
            result = repo.load(src, batch_size=batch_size, progress=report)
        else:
            with open_input(src) as (stream, _size):
                result = repo.load(stream, batch_size=batch_size, name=src, progress=report)
    info = {
        "path": path,
        "records": result.records,
        "deleted": result.deleted,
        "commits": [cid.encode() for cid in result.commits],
        "head": result.head.encode(),
        "rev": result.rev,
    }
    if as_json:
        emit_json(info)
    else:
        echo(
            f"loaded {_count(result.records, 'record')}, deleted {result.deleted}, "
            f"in {_count(len(result.commits), 'commit')} into {path}"
        )
        echo(f"head {info['head']}  rev {result.rev}")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


#: The commands this module defines (see pypds.cli.app.COMMAND_MODULES).
COMMANDS = [ls_cmd, get_cmd, collections_cmd, dump_cmd, unpack_cmd, put_cmd, rm_cmd, load_cmd]
