"""Commands on records: ls, get, collections, unpack, put, rm."""

from __future__ import annotations

import json
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
    MissingBlock,
    RecordNotFound,
    counted,
)
from .common import (
    InputError,
    Progress,
    Signer,
    echo,
    emit_json,
    json_option,
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
@json_option
@quiet_option
def ls_cmd(
    src: str, collection: str | None, limit: int | None, cursor: str | None, reverse: bool, as_json: bool, quiet: bool
) -> None:
    """List record paths and their CIDs, in key order.

    SRC is a repository directory or a CAR file (- for stdin). With
    COLLECTION only that collection is listed.

    \b
    Example:
      pypds ls ./alice app.bsky.feed.post --limit 10
    """
    if cursor is not None and collection is None:
        raise click.UsageError("--cursor needs a COLLECTION")
    with open_source(src, Progress.create(quiet)) as source:
        repo = source.repo
        if collection is not None:
            listed = repo.list(collection, limit=limit, cursor=cursor, reverse=reverse)
            rows = [(f"{collection}/{rkey}", cid) for rkey, cid in listed]
            if not rows and cursor is None and limit != 0 and collection not in repo.collections():
                known = ", ".join(repo.collections()) or "none"
                raise InputError(f"no collection {collection} in {src} (collections: {known})")
        else:
            rows = []
            for path, cid in repo.checkout().items(reverse=reverse):
                if limit is not None and len(rows) >= limit:
                    break
                rows.append((path, cid))
    if as_json:
        emit_json([_path_json(path, cid) for path, cid in rows])
    else:
        print_rows([(path, cid.encode()) for path, cid in rows])


def _path_json(path: str, cid: CID) -> dict:
    collection, rkey = path.split("/", 1)
    return {"path": path, "collection": collection, "rkey": rkey, "cid": cid.encode()}


@click.command("collections", short_help="List collections with record counts.")
@click.argument("src")
@json_option
@quiet_option
def collections_cmd(src: str, as_json: bool, quiet: bool) -> None:
    """List the collections that hold records, with their record counts.

    \b
    Example:
      pypds collections alice.car
    """
    with open_source(src, Progress.create(quiet)) as source:
        counts = Counter(path.split("/", 1)[0] for path, _cid in source.repo.checkout().items())
    if as_json:
        emit_json([{"collection": name, "records": counts[name]} for name in sorted(counts)])
    else:
        print_rows([(name, str(counts[name])) for name in sorted(counts)])


@click.command("get", short_help="Print one record as atproto JSON.")
@click.argument("src")
@click.argument("collection")
@click.argument("rkey")
@click.option("--json", "as_json", is_flag=True, help='Wrap the record: {"path", "cid", "value"}.')
@quiet_option
def get_cmd(src: str, collection: str, rkey: str, as_json: bool, quiet: bool) -> None:
    """Print one record as atproto JSON ($link for CIDs, $bytes for bytes).

    \b
    Example:
      pypds get ./alice app.bsky.feed.post 3jui7kd54zh2y
    """
    with open_source(src, Progress.create(quiet)) as source:
        repo = source.repo
        cid = repo.find_cid(collection, rkey)
        value = repo.find(collection, rkey)
    if cid is None or value is None:
        raise RecordNotFound(f"no record at {collection}/{rkey} in {src}")
    if as_json:
        emit_json({"path": f"{collection}/{rkey}", "cid": cid.encode(), "value": to_json(value)})
    else:
        emit_json(to_json(value))


@click.command("unpack", short_help="Write every record as a JSON file.")
@click.argument("src")
@click.option("-o", "--output", "out_dir", required=True, metavar="DIR", help="Directory to write into.")
@click.option("--force", is_flag=True, help="Write into a directory that is not empty.")
@json_option
@quiet_option
def unpack_cmd(src: str, out_dir: str, force: bool, as_json: bool, quiet: bool) -> None:
    """Write every record as DIR/<collection>/<rkey>.json, plus DIR/_commit.json.

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
        head = repo.head
        tree = repo.checkout()
        total = len(tree) if progress.enabled else None
        target.mkdir(parents=True, exist_ok=True)
        _write_json(target / "_commit.json", cbor.decode(repo.blockstore.get(head) or b"", "commit"))
        with progress.steps("unpacking", total) as advance:
            for path, cid in tree.items():
                collection, rkey = path.split("/", 1)
                data = repo.blockstore.get(cid)
                if data is None:
                    raise MissingBlock(f"record {cid.encode()} for {path} is missing", cid)
                folder = target / collection
                if collection not in counts:
                    folder.mkdir(exist_ok=True)
                _write_json(folder / f"{rkey}.json", cbor.decode(data, path))
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


@click.command("rm", short_help="Delete a record.")
@click.argument("path")
@click.argument("collection")
@click.argument("rkey")
@signing_key_options
@json_option
def rm_cmd(path: str, collection: str, rkey: str, signer: Signer, as_json: bool) -> None:
    """Delete a record in one signed commit.

    \b
    Example:
      pypds rm ./alice app.bsky.feed.post 3jui7kd54zh2y
    """
    with open_repo(path, signer=signer) as repo:
        repo.delete(collection, rkey)
        info = {"path": f"{collection}/{rkey}", "commit": repo.head.encode(), "rev": repo.rev}
    print_info(info, as_json)


RECORD_COMMANDS = [ls_cmd, get_cmd, collections_cmd, unpack_cmd, put_cmd, rm_cmd]
