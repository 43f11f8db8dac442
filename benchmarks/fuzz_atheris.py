"""Coverage-guided fuzzing of pypds's untrusted-input paths with atheris (libFuzzer).

Run by hand, not by pytest or ``python -m benchmarks``::

    pip install atheris
    python benchmarks/fuzz_atheris.py [TARGET] [libFuzzer flags] [CORPUS_DIR ...]

    python benchmarks/fuzz_atheris.py commit -max_total_time=300 -timeout=2 -rss_limit_mb=1024 corpus/
    python benchmarks/fuzz_atheris.py -atheris_runs=200000          # all targets, fresh seed corpus

TARGET is one of ``car``, ``node``, ``commit``, ``record``, ``import`` or
``all`` (the default: the first input byte picks the target). Without a
corpus directory, seeds (a small repository's CAR and its commit, MST node
and record blocks) are written to a temporary directory and used.

The contract checked on every input: the call returns normally or raises a
``pypds.PypdsError``; an accepted MST node or commit re-encodes to the same
bytes; a failed import leaves the target repository unchanged and ``from_car``
leaves no directory. Anything else (RecursionError, MemoryError, KeyError,
an assertion) propagates, and libFuzzer saves the input as ``crash-<sha1>``.
Reproduce one with ``python benchmarks/fuzz_atheris.py TARGET crash-<sha1>``.
``-timeout=2`` turns a slow input into a saved ``timeout-<sha1>``;
``-rss_limit_mb`` bounds memory. Scratch repositories live in
``$TMPDIR/pypds-fuzz-*``, removed at a normal exit but left behind when
libFuzzer stops on a crash.

A custom mutator sometimes wraps part of the input in hundreds or thousands
of one-element arrays or maps (``81`` / ``a1 61 61``), which byte mutations
alone almost never build; it reaches the deep-nesting bugs within seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import random
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import pypds
    from pypds import CarReader, PypdsError, Repo, decode_commit
    from pypds.codec.cbor import decode_record
    from pypds.mst import decode_node, encode_node, walk_tree

DID = "did:plc:w4xbfzo7kqfes5zb7r6qv3rw"
POST = "app.bsky.feed.post"
LIKE = "app.bsky.feed.like"

WORKDIR = Path(tempfile.mkdtemp(prefix="pypds-fuzz-"))
atexit.register(shutil.rmtree, WORKDIR, True)
_counter = 0


def fresh_path() -> Path:
    global _counter
    _counter += 1
    return WORKDIR / f"r{_counter}"


# -- targets ------------------------------------------------------------------------------------


def fuzz_car(data: bytes) -> None:
    try:
        with CarReader(io.BytesIO(data)) as reader:
            for _cid, _block in reader:
                pass
    except PypdsError:
        pass


def fuzz_node(data: bytes) -> None:
    try:
        node = decode_node(data)
    except PypdsError:
        return
    assert encode_node(node) == data, "an accepted MST node does not re-encode to its bytes"


def fuzz_commit(data: bytes) -> None:
    try:
        commit = decode_commit(data)
    except PypdsError:
        return
    assert commit.encode() == data, "an accepted commit does not re-encode to its bytes"


def fuzz_record(data: bytes) -> None:
    with contextlib.suppress(PypdsError):
        decode_record(data)


class _Target:
    repo: Repo | None = None


def _target() -> Repo:
    if _Target.repo is None:
        repo = Repo.create(fresh_path(), DID, durability="normal")
        repo.put(POST, "own1", {"$type": POST, "text": "own"})
        _Target.repo = repo
    return _Target.repo


def _state(repo: Repo) -> tuple:
    return repo.head, repo.rev, len(repo.blockstore)


def fuzz_import(data: bytes) -> None:
    repo = _target()
    before = _state(repo)
    try:
        repo.import_car(data)
    except PypdsError:
        assert _state(repo) == before, "a failed import_car changed the target repository"
    else:  # start the next input from a target that does not hold these blocks
        repo.close()
        _Target.repo = None
    path = fresh_path()
    try:
        Repo.from_car(path, data, durability="normal").close()
    except PypdsError:
        assert not path.exists(), "a failed from_car left a directory behind"
    else:
        shutil.rmtree(path)


TARGETS = {
    "car": fuzz_car,
    "node": fuzz_node,
    "commit": fuzz_commit,
    "record": fuzz_record,
    "import": fuzz_import,
}
NAMES = list(TARGETS)


def fuzz_all(data: bytes) -> None:
    if data:
        TARGETS[NAMES[data[0] % len(NAMES)]](data[1:])


# -- mutation: libFuzzer's, plus deep nesting ------------------------------------------------------

# Inserted in front of a CBOR item, each of these wraps it one level deeper and keeps the bytes
# well formed: an array of one item, or a map {"a": item}. libFuzzer's byte mutations alone
# practically never build the hundreds of levels that reach recursion limits.
WRAPPERS = (b"\x81", b"\xa1\x61a")


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if data and rng.random() < 0.05:
        at = rng.randrange(len(data) + 1)
        wrapper = rng.choice(WRAPPERS)
        depth = rng.choice((8, 200, 1100, 5000))
        return (data[:at] + wrapper * depth + data[at:])[:max_size]
    return atheris.Mutate(data, max_size)


# -- seeds --------------------------------------------------------------------------------------


def seed_inputs() -> dict[str, list[bytes]]:
    """A small repository's CAR, and its commit, MST node and record blocks."""
    with Repo.create(fresh_path(), DID, durability="normal") as repo:
        for i in range(30):
            collection = POST if i % 2 else LIKE
            repo.put(collection, f"3kabc{i:04d}xyz", {"$type": collection, "text": f"record {i}"})
        car = repo.export_car()
        head, data_root = repo.head, repo.commit().data
    blocks = {cid.cid_bytes: block for cid, block in CarReader(car)}
    nodes, records = [], []
    for step in walk_tree(lambda c: blocks.get(c.cid_bytes), data_root):
        (nodes if step.node is not None else records).append(blocks[step.cid.cid_bytes])
    return {
        "car": [car],
        "import": [car],
        "node": nodes,
        "commit": [blocks[head.cid_bytes]],
        "record": records[:5],
    }


def write_seed_corpus(target: str) -> Path:
    corpus = WORKDIR / f"corpus-{target}"
    corpus.mkdir()
    seeds = seed_inputs()
    n = 0
    for name, inputs in seeds.items():
        if target not in ("all", name):
            continue
        for data in inputs:
            prefix = bytes([NAMES.index(name)]) if target == "all" else b""
            (corpus / f"seed-{n}").write_bytes(prefix + data)
            n += 1
    return corpus


def main() -> None:
    argv = list(sys.argv)
    target = "all"
    if len(argv) > 1 and (argv[1] in TARGETS or argv[1] == "all"):
        target = argv.pop(1)
    if not any(not arg.startswith("-") for arg in argv[1:]):
        argv.append(str(write_seed_corpus(target)))
    if not any(arg.startswith("-max_len=") for arg in argv):
        argv.append("-max_len=65536")  # room for a whole CAR and for deep nesting
    print(f"pypds {pypds.__version__}: fuzzing target {target!r}", file=sys.stderr)
    atheris.Setup(argv, fuzz_all if target == "all" else TARGETS[target], custom_mutator=mutate)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
