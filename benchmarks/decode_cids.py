"""Time decoding of MST node and record blocks: what the CID class costs the codec.

    python -m benchmarks.decode_cids [--records 100000] [--repeat 7]

Builds a repository of N posts (each with a link to the previous one, so
records carry CIDs too), exports it to a CAR and decodes every MST node
block and every record block, as the import, the export walk and reads do:

* ``cbrrr, cid_ctor=cbrrr.CID``: the codec alone, with cbrrr's own CID class (the floor);
* ``cbrrr, cid_ctor=pypds.CID``: the codec alone, building ``pypds.CID`` (what pypds decodes with);
* ``decode_node``: :func:`pypds.mst.node.decode_node`, decoding and every MST check;
* ``decode_links``: :func:`pypds.mst.node.decode_links`, the export walk's decoder;
* ``decode_record``: :func:`pypds.codec.cbor.decode_record`, a record with its checks.

Each row is the best of ``--repeat`` passes over all blocks, the rows taking
turns, in CPU seconds of this process (the machine is shared: CPU time leaves
out the waits for other processes, and the best pass is the least disturbed). Not a test: nothing here
passes or fails.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbrrr

from pypds import CID, CarReader, Repo
from pypds.codec.cbor import decode_record
from pypds.mst.node import decode_links, decode_node
from pypds.tid import encode_tid

DID = "did:plc:benchmarkbenchmarkbench"
POST = "app.bsky.feed.post"
START_MICROS = 1_700_000_000_000_000

decode_plain = functools.partial(cbrrr.decode_dag_cbor, cid_ctor=cbrrr.CID)
decode_pypds = functools.partial(cbrrr.decode_dag_cbor, cid_ctor=CID)


def blocks(n: int) -> tuple[list[tuple[Any, bytes]], list[bytes]]:
    """The (CID, bytes) of every MST node and the bytes of every record of an N-record repository."""
    with tempfile.TemporaryDirectory() as tmp, Repo.create(Path(tmp) / "repo", DID) as repo:
        with repo.batch() as batch:
            previous = None
            for i in range(n):
                record: dict = {"$type": POST, "text": f"post {i}", "createdAt": "2024-01-01T00:00:00Z"}
                if previous is not None:
                    record["reply"] = {"parent": {"uri": f"at://{DID}/{POST}/x", "cid": previous}}
                previous = batch.put(POST, encode_tid(START_MICROS + i * 1000, 0), record)
        car = repo.export_car()
    nodes, records = [], []
    for index, (cid, data) in enumerate(CarReader(car)):
        if index == 0:
            continue  # the commit
        value = cbrrr.decode_dag_cbor(data)
        if type(value) is dict and "$type" in value:
            records.append(data)
        else:
            nodes.append((cid, data))
    return nodes, records


def each(decode: Callable[[bytes], object], blocks: list[bytes]) -> None:
    """Decode every block, keeping nothing (as a walk does)."""
    for data in blocks:
        decode(data)


def each_pair(decode: Callable[[bytes, Any], object], blocks: list[tuple[Any, bytes]]) -> None:
    """Decode every (CID, block) pair, keeping nothing."""
    for cid, data in blocks:
        decode(data, cid)


def best_times(repeat: int, runs: list[Callable[[], object]]) -> list[float]:
    """The fastest of ``repeat`` timed calls of each of ``runs``, called in turn (so a busy
    moment of the machine does not fall on one row only)."""
    best = [float("inf")] * len(runs)
    for _ in range(repeat):
        for i, run in enumerate(runs):
            start = time.process_time()
            run()
            best[i] = min(best[i], time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    nodes, records = blocks(args.records)
    node_bytes = [data for _cid, data in nodes]
    rows: list[tuple[str, int, Callable[[], object]]] = [
        ("cbrrr, cid_ctor=cbrrr.CID: MST nodes", len(nodes), lambda: each(decode_plain, node_bytes)),
        ("cbrrr, cid_ctor=cbrrr.CID: records", len(records), lambda: each(decode_plain, records)),
        ("cbrrr, cid_ctor=pypds.CID: MST nodes", len(nodes), lambda: each(decode_pypds, node_bytes)),
        ("cbrrr, cid_ctor=pypds.CID: records", len(records), lambda: each(decode_pypds, records)),
        ("decode_node (all MST checks)", len(nodes), lambda: each_pair(decode_node, nodes)),
        ("decode_links (export walk)", len(nodes), lambda: each_pair(decode_links, nodes)),
        ("decode_record (record checks)", len(records), lambda: each(decode_record, records)),
    ]
    print(
        f"{args.records:,} records: {len(nodes):,} MST node blocks, {len(records):,} record blocks; "
        f"best of {args.repeat}"
    )
    print(f"{'decoder':<38} {'blocks':>8} {'CPU s':>9} {'blocks/s':>11} {'us/block':>9}")
    seconds = best_times(args.repeat, [run for _name, _count, run in rows])
    for (name, count, _run), took in zip(rows, seconds, strict=True):
        print(f"{name:<38} {count:>8,} {took:>9.4f} {count / took:>11,.0f} {took / count * 1e6:>9.2f}")


if __name__ == "__main__":
    main()
