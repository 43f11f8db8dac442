"""Move the records of one repository into another: read each, transform it, write in batches, compare.

    python examples/migrate.py ./alice ./alice-new --did did:plc:vwzwgnygau7ed7b7wt5ux7y2
    python examples/migrate.py ./alice ./alice-new --did did:plc:vwzwgnygau7ed7b7wt5ux7y2 \\
        --skip app.bsky.feed.like --batch 200

The target is created with a new signing key (stored in it) unless it
exists. Every record keeps its collection and record key; the transform
below re-points ``at://<old DID>/...`` links to the new DID and drops the
collections given with --skip. Blobs the copied records use are copied
too. Each batch is one signed commit, so a crash midway leaves the target
at the last whole batch: run the script again and it writes the rest (a
record already there is written again only if it differs).

To migrate a CAR file, import it first: ``pypds import ./alice alice.car``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from pypds import CID, Repo
from pypds.storage.blobs import blob_refs


def transform(record: Any, old_did: str, new_did: str) -> Any:
    """The record for the new repository: links to the old account's records point at the new one.

    Records are the atproto data model: dicts, lists, strings, ints, bools,
    None, bytes and CID links. A strong reference (``{uri, cid}``) keeps its
    CID: if the record it names changed here too, that CID now names the old
    version (fine for likes of posts, which this transform leaves alone).
    """
    if isinstance(record, str) and record.startswith(f"at://{old_did}/"):
        return f"at://{new_did}/" + record[len(f"at://{old_did}/") :]
    if isinstance(record, dict):
        return {key: transform(value, old_did, new_did) for key, value in record.items()}
    if isinstance(record, list):
        return [transform(value, old_did, new_did) for value in record]
    return record  # numbers, bytes, CID links, ...


def records(repo: Repo, skip: set[str]) -> Iterator[tuple[str, str, Any]]:
    """(collection, rkey, record) of every record at HEAD, in path order, minus skipped collections.

    ``repo.records()`` reads them a page at a time, so memory does not grow with the repository.
    """
    for path, _cid, record in repo.records():
        collection, rkey = path.split("/", 1)
        if collection not in skip:
            yield collection, rkey, record


def copy_records(source: Repo, target: Repo, skip: set[str], batch_size: int) -> tuple[int, int]:
    """Write the transformed records (and their blobs) in batches; returns (records written, commits)."""
    written = commits = 0
    todo = records(source, skip)
    while chunk := list(islice(todo, batch_size)):
        with target.batch() as batch:  # one signed commit; an exception inside writes nothing
            for collection, rkey, record in chunk:
                new = transform(record, source.did, target.did)
                if target.find(collection, rkey) == new:
                    continue  # already copied by an earlier run
                copy_blobs(source, target, blob_refs(new))
                batch.put(collection, rkey, new)
                written += 1
        commits += 1 if batch.commit is not None else 0
    return written, commits


def copy_blobs(source: Repo, target: Repo, cids: list[CID]) -> None:
    for cid in cids:
        data = source.blob(cid)  # checked against its CID on read
        if data is not None and target.blob(cid) is None:
            # The type put_blob was given, if the source kept it (the records carry it anyway).
            target.put_blob(data, source.blob_type(cid) or "application/octet-stream")


def compare(source: Repo, target: Repo, skip: set[str]) -> list[str]:
    """Differences between the target and the transformed source (empty: they agree)."""
    problems = []
    expected = 0
    for collection, rkey, record in records(source, skip):
        expected += 1
        if target.find(collection, rkey) != transform(record, source.did, target.did):
            problems.append(f"{collection}/{rkey} differs or is missing")
    if len(target.checkout()) != expected:
        problems.append(f"the target holds {len(target.checkout())} records, expected {expected}")
    problems += [f"blob {cid.encode()} missing" for cid in target.missing_blobs()]
    if not target.verify().ok:
        problems.append("the target does not verify")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description="Copy every record of one repository into another, transformed.")
    parser.add_argument("source", help="repository directory to read")
    parser.add_argument("target", help="repository directory to write (created if missing)")
    parser.add_argument("--did", required=True, help="the target's DID (when it is created)")
    parser.add_argument("--skip", action="append", default=[], metavar="COLLECTION", help="do not copy; repeatable")
    parser.add_argument("--batch", type=int, default=500, help="records per commit (default 500)")
    args = parser.parse_args()

    target_path = Path(args.target)
    with (
        Repo.open(args.source) as source,  # read-only is enough: no key needed
        Repo.open(target_path) if (target_path / "pds.db").exists() else Repo.create(target_path, args.did) as target,
    ):
        written, commits = copy_records(source, target, set(args.skip), args.batch)
        print(f"wrote {written} records in {commits} commit(s) to {target.path} ({target.did})")
        problems = compare(source, target, set(args.skip))
    for problem in problems:
        print("  " + problem)
    print("compare: " + ("the target matches the transformed source" if not problems else "DIFFERENCES"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
