"""The writer side of the crash-safety harness (see ``tests/crash_harness.py``).

    python -m tests.crash_writer REPO_DIR ACK_FILE SEED      # from the project root

Opens the repository (created beforehand, with a stored key) and loops
forever, choosing at random: a single put, a single delete of an existing
record, a batch of 1-50 mixed writes, a ``put_blob`` of 0-300 KB, an
``import_car`` of one of the CARs lying next to the repository
(``import-*.car``), a ``set_ref``, a ``revert`` to a recent commit, or a
``gc`` (which always vacuums, keeps every blob file, and removes every
commit but HEAD and the refs). It is meant to be killed with SIGKILL.

ACK_FILE receives one JSON object per line:

* ``{"ev": "start", ...}`` once the repository is open (HEAD as seen then);
* ``{"ev": "begin", "op": ..., ...}`` just before an operation starts
  (flushed, not fsynced: it only has to survive a killed process, and it
  tells the checker which operation was in flight and what it would change);
* ``{"ev": "ack", "op": ..., "head": ..., "rev": ..., ...}`` after the
  operation returned: what pypds now guarantees. Written, flushed and
  fsynced BEFORE the next operation starts.

Blob bytes are derived from a seed (:func:`blob_bytes`) recorded in the
lines, so the checker can regenerate and compare them.
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
import sys
import traceback
from pathlib import Path

#: operation -> relative weight
OP_WEIGHTS = {"put": 30, "delete": 12, "batch": 22, "blob": 12, "import": 3, "set_ref": 4, "revert": 3, "gc": 2}
COLLECTIONS = ("app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow")
REF_NAMES = tuple(f"crash-ref-{i}" for i in range(4))
MAX_BLOB = 300 * 1024
BLOB_MIME = "application/octet-stream"
CAR_GLOB = "import-*.car"
_RKEY_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
_WORDS = ("atproto", "repo", "commit", "crash", "kill", "sqlite", "fsync", "tree", "blob", "rev", "head", "car")


def blob_bytes(seed: int, size: int) -> bytes:
    """The deterministic content of a test blob."""
    return random.Random(seed).randbytes(size)


def blob_size(rng: random.Random) -> int:
    """0-300 KB: sometimes empty, a third uniform, the rest log-uniform (mostly small)."""
    pick = rng.random()
    if pick < 0.05:
        return 0
    if pick < 0.38:
        return rng.randint(1, MAX_BLOB)
    return min(MAX_BLOB, int(math.exp(rng.uniform(0.0, math.log(MAX_BLOB)))))


def make_record(rng: random.Random, collection: str) -> dict:
    words = rng.randint(0, 60) if rng.random() < 0.95 else rng.randint(200, 1500)
    return {
        "$type": collection,
        "text": " ".join(rng.choice(_WORDS) for _ in range(words)),
        "createdAt": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T00:00:00.000Z",
        "n": rng.getrandbits(40),
    }


def record_cid(record: dict, path: str) -> str:
    """The CID string pypds will give ``record`` stored at ``path``."""
    from pypds import cid_for_cbor
    from pypds.codec.cbor import encode_record

    return cid_for_cbor(encode_record(record, path)).encode()


def make_path(rng: random.Random) -> tuple[str, str]:
    return rng.choice(COLLECTIONS), "".join(rng.choice(_RKEY_ALPHABET) for _ in range(13))


class KeySet:
    """The repo paths at HEAD, with O(1) random choice and removal."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = list(keys)
        self.pos = {k: i for i, k in enumerate(self.keys)}

    def add(self, key: str) -> None:
        if key not in self.pos:
            self.pos[key] = len(self.keys)
            self.keys.append(key)

    def remove(self, key: str) -> None:
        i = self.pos.pop(key)
        last = self.keys.pop()
        if i < len(self.keys):
            self.keys[i] = last
            self.pos[last] = i

    def choice(self, rng: random.Random) -> str | None:
        return rng.choice(self.keys) if self.keys else None


class Log:
    """The ack file: begin lines are flushed, ack lines flushed and fsynced."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process

    def write(self, entry: dict, *, sync: bool) -> None:
        self.file.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self.file.flush()
        if sync:
            os.fsync(self.file.fileno())


def head_keys(repo) -> KeySet:
    return KeySet([key for key, _cid in repo.checkout()])


def run(repo_dir: str, ack_file: str, seed: int) -> None:
    from pypds import CarReader, Repo

    rng = random.Random(seed)
    log = Log(ack_file)
    cars: list[tuple[str, str]] = []
    for car in sorted(Path(repo_dir).absolute().parent.glob(CAR_GLOB)):
        with CarReader(car) as reader:
            cars.append((str(car), reader.roots[0].encode()))
    # durability="full" (the default); the imported CARs are signed by other keys, so a
    # write after an import signs over a HEAD our key did not sign: opted in with rotate_key
    repo = Repo.open(repo_dir, rotate_key=True)
    keys = head_keys(repo)
    # commits set_ref may point at: the first HEAD, the CAR roots once imported, the latest 100 HEADs
    fixed = [repo.head.encode()] + [root for _path, root in cars if root in repo.blockstore]
    recent: collections.deque[str] = collections.deque(maxlen=100)
    log.write({"ev": "start", "run": seed, "pid": os.getpid(), "head": fixed[0], "rev": repo.rev}, sync=True)
    ops, weights = zip(*OP_WEIGHTS.items(), strict=True)
    seq = 0
    while True:
        seq += 1
        op = rng.choices(ops, weights)[0]
        if op == "delete" and not keys.keys:
            op = "put"
        if op == "import" and not cars:
            op = "batch"
        target = rng.choice(fixed + list(recent)) if op == "revert" else ""
        changes = repo.diff(repo.head, target) if op == "revert" else []
        if op == "revert" and not changes:  # HEAD already has that tree: a revert would write nothing
            op = "put"
        begin: dict = {"ev": "begin", "run": seed, "seq": seq, "op": op}
        extra: dict = {}
        if op == "put":
            collection, rkey = make_path(rng)
            if keys.keys and rng.random() < 0.2:  # overwrite an existing record
                collection, rkey = keys.choice(rng).split("/")  # type: ignore[union-attr]
            record = make_record(rng, collection)
            path = f"{collection}/{rkey}"
            expected = record_cid(record, path)
            begin["effects"] = {path: expected}
            log.write(begin, sync=False)
            cid = repo.put(collection, rkey, record).encode()
            if cid != expected:
                raise AssertionError(f"put {path}: pypds returned {cid}, expected {expected}")
            keys.add(path)
            extra = {"key": path, "cid": cid}
        elif op == "delete":
            path = keys.choice(rng)  # type: ignore[assignment]
            begin["effects"] = {path: None}
            log.write(begin, sync=False)
            collection, rkey = path.split("/")
            repo.delete(collection, rkey)
            keys.remove(path)
            extra = {"key": path}
        elif op == "batch":
            effects = plan_batch(rng, keys)
            begin["effects"] = {path: cid for path, (cid, _record) in effects.items()}
            log.write(begin, sync=False)
            with repo.batch() as batch:
                for path, (_cid, record) in effects.items():
                    collection, rkey = path.split("/")
                    if record is None:
                        batch.delete(collection, rkey)
                    else:
                        batch.put(collection, rkey, record)
            for path, (cid, _record) in effects.items():
                if cid is None:
                    keys.remove(path)
                else:
                    keys.add(path)
            extra = {"writes": len(effects), "batch_commit": batch.commit.encode() if batch.commit else None}
        elif op == "blob":
            blob_seed, size = rng.getrandbits(62), blob_size(rng)
            begin.update(seed=blob_seed, size=size)
            data = blob_bytes(blob_seed, size)
            log.write(begin, sync=False)
            ref = repo.put_blob(data, BLOB_MIME)
            extra = {"cid": ref.cid.encode(), "seed": blob_seed, "size": size}
        elif op == "import":
            car_path, root = rng.choice(cars)
            begin.update(car=car_path, root=root)
            log.write(begin, sync=False)
            repo.import_car(car_path)
            keys = head_keys(repo)
            if root not in fixed:
                fixed.append(root)
            extra = {"car": car_path, "root": root}
        elif op == "set_ref":
            name, target = rng.choice(REF_NAMES), rng.choice(fixed + list(recent))
            begin.update(name=name, target=target)
            log.write(begin, sync=False)
            repo.set_ref(name, target)
            extra = {"name": name, "target": target}
        elif op == "revert":
            begin.update(target=target, effects={c.path: None if c.new is None else c.new.encode() for c in changes})
            log.write(begin, sync=False)
            repo.revert(target)
            for change in changes:
                if change.new is None:
                    keys.remove(change.path)
                else:
                    keys.add(change.path)
            extra = {"target": target}
        elif op == "gc":
            kept = [repo.head.encode(), *(cid.encode() for _name, cid in repo.list_refs())]
            begin.update(kept=kept)
            log.write(begin, sync=False)
            report = repo.gc(blob_grace=1e9, vacuum=True)  # blob files stay: acknowledged blobs must read back
            fixed = [cid for cid in fixed if cid in repo.blockstore]
            recent = collections.deque((cid for cid in recent if cid in repo.blockstore), maxlen=100)
            extra = {"kept": kept, "blocks": report.blocks}
        head = repo.head.encode()
        log.write({"ev": "ack", "run": seed, "seq": seq, "op": op, "head": head, "rev": repo.rev, **extra}, sync=True)
        if not recent or recent[-1] != head:
            recent.append(head)


def plan_batch(rng: random.Random, keys: KeySet) -> dict[str, tuple[str | None, dict | None]]:
    """1-50 writes, in order: path -> (record CID or None for a delete, record).

    Only the final effect per path is kept, so a path appears once and
    deletes always target records that exist at HEAD.
    """
    effects: dict[str, tuple[str | None, dict | None]] = {}
    for _ in range(rng.randint(1, 50)):
        kind = rng.random()
        if kind < 0.3 and keys.keys:
            path = keys.choice(rng)
            if path in effects:
                continue
            effects[path] = (None, None)
            continue
        if kind < 0.45 and keys.keys:
            path = keys.choice(rng)  # overwrite
            if path in effects:
                continue
        else:
            collection, rkey = make_path(rng)
            path = f"{collection}/{rkey}"
        record = make_record(rng, path.split("/")[0])
        effects[path] = (record_cid(record, path), record)
    if not effects:
        collection, rkey = make_path(rng)
        path = f"{collection}/{rkey}"
        record = make_record(rng, collection)
        effects[path] = (record_cid(record, path), record)
    return effects


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m tests.crash_writer REPO_DIR ACK_FILE SEED", file=sys.stderr)
        return 2
    try:
        run(argv[0], argv[1], int(argv[2]))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
