"""Crash-safety harness: kill a writer with SIGKILL at random moments, then check the repo.

:func:`run_kill_cycles` creates a repository (stored key) and two CARs of the
same DID made from other repositories, then, cycle after cycle, on the same
repository (so any damage accumulates):

1. starts ``python -m tests.crash_writer`` (see that module) in a subprocess;
2. sleeps a random delay, measured from the spawn (sometimes, so kills also
   land while the writer starts up and opens the repo) or from the moment the
   writer reported the repo open, then sends SIGKILL and waits;
3. reads the writer's log (begin/ack lines) and checks:

   * ``opens``: ``Repo.open`` succeeds;
   * ``head_complete``: every MST node and record reachable from HEAD is
     stored (``repo._state.check_complete``, a full iteration, ``repo.verify().ok``
     when pypds has it, and a hash-checking walk);
   * ``head_not_lost``: HEAD is the last acknowledged commit, or the result of
     the operation that was in flight (a new commit with a higher rev whose
     tree holds exactly the in-flight writes, or the CAR root of an
     in-flight import), never an older or unknown commit;
   * ``acked_commits``: every acknowledged commit is still stored (but those a
     ``gc`` removed: every commit but the HEAD and refs it kept), hashes to
     its CID, is signed by the right key, and its tree is complete and
     hash-checked; acknowledged puts/deletes/batches/reverts are visible in
     their commit; a sample is checked out through the API, iterated fully
     and passed to ``set_ref``;
   * ``revs``: revs of new commits strictly increase, across restarts too;
   * ``refs``: each ref points where its last acknowledged ``set_ref`` put it
     (or where an in-flight ``set_ref`` was putting it);
   * ``blobs_read``: every acknowledged blob reads back byte for byte;
   * ``blob_files``: every file under ``blobs/`` not named ``.tmp-*`` hashes
     to its name (no partial file under a final name);
   * ``integrity``: SQLite's ``PRAGMA quick_check``;
   * ``writable``: the checker itself commits a put (acknowledged in the log
     like the writer's, so the next writer must start from it).

A failed check raises :class:`CrashCheckFailure` naming the cycle, seed,
what the writer was doing when killed and what was wrong; the whole work
directory (repo, log, CARs, the pre-check copy of ``pds.db``) is copied under
``/tmp/crash-failures/`` first.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pypds import CID, Repo, cid_for_raw
from pypds.codec.cid import verify_block
from pypds.commit import Commit, decode_commit
from pypds.keys import load_public_key
from pypds.mst.node import decode_node

from .crash_writer import COLLECTIONS, blob_bytes, make_record, record_cid

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FAILURE_DIR = Path("/tmp/crash-failures")
DID = "did:plc:w4xbfzo7kqfes5zb7r6qv3rw"
PROBE_REF = "crash-checker-probe"
#: per cycle: acknowledged commits of this cycle checked through the API (checkout, full
#: iteration, set_ref, exact diff against the previous HEAD), older ones checked that way,
#: older ones re-walked with hash checks (every new one is always walked)
API_NEW_SAMPLE, API_OLD_SAMPLE, WALK_OLD_SAMPLE = 4, 2, 8
NEW_COMMIT_OPS = ("put", "delete", "batch", "revert", "checker_put")
#: Operations whose acknowledged commit holds the previous HEAD's tree with their effects applied.
WRITE_OPS = ("put", "delete", "batch", "revert")
#: CARs imported by the writer: (file name, records, created before the target repo)
CAR_SPECS = (("import-1.car", 250, True), ("import-2.car", 1200, False))
CHECK_NAMES = (
    "opens",
    "writer_handoff",
    "head_complete",
    "verify",
    "head_not_lost",
    "acked_commits",
    "revs",
    "refs",
    "blobs_read",
    "blob_files",
    "integrity",
    "writable",
)


class CrashCheckFailure(AssertionError):
    """A check failed after a kill: acknowledged data lost or the repository damaged.

    ``stats`` holds the run's statistics up to the failure.
    """

    stats: CrashStats | None = None


class _CheckError(Exception):
    pass


@dataclass
class CrashStats:
    seed: int
    cycles_requested: int
    min_delay: float
    max_delay: float
    cycles: int = 0
    kills: int = 0
    survived: int = 0
    acked_ops: int = 0
    acked_by_op: collections.Counter = field(default_factory=collections.Counter)
    kills_by_phase: collections.Counter = field(default_factory=collections.Counter)
    kill_anchor: collections.Counter = field(default_factory=collections.Counter)
    committed_unacked: collections.Counter = field(default_factory=collections.Counter)
    checks: collections.Counter = field(default_factory=collections.Counter)
    commits_walked: int = 0
    api_checkouts: int = 0
    blob_reads: int = 0
    blob_files_hashed: int = 0
    tmp_files_left: int = 0
    final: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def checks_passed(self) -> int:
        return sum(self.checks.values())

    def table(self) -> str:
        rows: list[tuple[str, object]] = [
            ("seed", self.seed),
            ("delay (s)", f"{self.min_delay:g}-{self.max_delay:g}"),
            ("cycles run / requested", f"{self.cycles} / {self.cycles_requested}"),
            ("SIGKILLs sent", self.kills),
            ("kills survived (all checks passed)", self.survived),
            ("failures", len(self.failures)),
            ("operations acknowledged (writer)", self.acked_ops),
            ("checks passed", self.checks_passed),
            ("commits walked (hash-checked trees)", self.commits_walked),
            ("commits checked out + iterated via API", self.api_checkouts),
            ("blob reads compared", self.blob_reads),
            ("blob files hashed", self.blob_files_hashed),
            ("leftover .tmp- blob files", self.tmp_files_left),
            ("elapsed (s)", f"{self.elapsed:.1f}"),
        ]
        out = ["| item | value |", "|---|---|"]
        out += [f"| {name} | {value} |" for name, value in rows]
        out += ["", "| killed while | kills | of which had committed, unacked |", "|---|---|---|"]
        for phase, count in sorted(self.kills_by_phase.items(), key=lambda kv: (-kv[1], kv[0])):
            op = phase.removeprefix("during ")
            unacked = self.committed_unacked.get(op, 0) if phase.startswith("during ") else ""
            out.append(f"| {phase} | {count} | {unacked} |")
        out += ["", "| kill delay measured from | kills |", "|---|---|"]
        out += [f"| {anchor} | {count} |" for anchor, count in sorted(self.kill_anchor.items())]
        out += ["", "| op | acknowledged |", "|---|---|"]
        out += [f"| {op} | {count} |" for op, count in sorted(self.acked_by_op.items(), key=lambda kv: -kv[1])]
        out += ["", "| check | passed |", "|---|---|"]
        out += [f"| {name} | {self.checks.get(name, 0)} |" for name in (*CHECK_NAMES, "final_sweep")]
        if self.final:
            out += ["", "| final repository | value |", "|---|---|"]
            out += [f"| {name} | {value} |" for name, value in self.final.items()]
        if self.failures:
            out += ["", "FAILURES:"] + [f"  - {failure}" for failure in self.failures]
        return "\n".join(out)


# -- the model of what was acknowledged -------------------------------------------


class _Model:
    """Everything the writers (and the checker) were told is durable."""

    def __init__(self, repo_key: str, car_keys: dict[str, str], car_revs: dict[str, str]) -> None:
        self.repo_key = repo_key
        self.car_keys = car_keys  # CAR root -> did:key of the repo that signed it
        self.car_revs = car_revs
        self.acks: list[dict] = []
        self.commits: dict[str, dict] = {}  # commit CID -> first ack naming it
        self.observed: dict[str, str] = {}  # unacknowledged HEADs found after a kill -> rev
        self.max_rev = ""
        self.last: dict = {}
        self.blobs: dict[str, tuple[int, int]] = {}
        self.refs: dict[str, str] = {}
        self.file_sigs: dict[str, tuple[int, int, int]] = {}

    def key_for(self, commit: str) -> str:
        return self.car_keys.get(commit, self.repo_key)

    def known_commits(self) -> list[str]:
        return list(self.commits) + list(self.observed)

    def prune(self, kept: list[str]) -> None:
        """A gc removed every commit but ``kept`` (HEAD and the refs then): stop requiring the others."""
        keep = set(kept)
        self.commits = {cid: ack for cid, ack in self.commits.items() if cid in keep}
        self.observed = {cid: rev for cid, rev in self.observed.items() if cid in keep}

    def add_ack(self, ack: dict) -> None:
        self.acks.append(ack)
        self.commits.setdefault(ack["head"], ack)
        self.max_rev = max(self.max_rev, ack["rev"])
        self.last = ack
        if ack["op"] == "blob":
            self.blobs[ack["cid"]] = (ack["seed"], ack["size"])
        elif ack["op"] == "set_ref":
            self.refs[ack["name"]] = ack["target"]


@dataclass
class _Cycle:
    number: int
    run_seed: int
    anchor: str
    delay: float = 0.0
    phase: str = "startup"
    inflight: dict | None = None
    new_acks: list[dict] = field(default_factory=list)
    started: bool = False


# -- the harness ---------------------------------------------------------------------


def run_kill_cycles(
    workdir: str | os.PathLike,
    cycles: int,
    seed: int,
    min_delay: float,
    max_delay: float,
    *,
    spawn_anchor_fraction: float = 0.2,
    stop_on_failure: bool = True,
    final_check: bool = True,
    failure_dir: str | os.PathLike = FAILURE_DIR,
    snapshot_limit: int = 64 << 20,
    progress: Callable[[CrashStats], None] | None = None,
    after_kill: Callable[[Path, list[dict]], None] | None = None,
) -> CrashStats:
    """Create a repo in ``workdir`` and run ``cycles`` start/SIGKILL/check cycles on it.

    Each delay is uniform in ``[min_delay, max_delay]`` seconds, measured from
    the spawn with probability ``spawn_anchor_fraction``, else from the
    writer's "repo open" line. Raises :class:`CrashCheckFailure` on the
    first failed check unless ``stop_on_failure`` is false (then failures are
    listed in the stats and the run goes on). ``final_check`` re-checks every
    acknowledged commit and blob at the end. ``after_kill(repo_dir, acks)``,
    if given, runs after each kill and before the checks (tests use it to
    damage the repository on purpose and see the checks catch it).
    """
    harness = _Harness(Path(workdir), cycles, seed, min_delay, max_delay, Path(failure_dir), snapshot_limit)
    harness.after_kill = after_kill
    return harness.run(spawn_anchor_fraction, stop_on_failure, final_check, progress)


class _Harness:
    def __init__(
        self,
        workdir: Path,
        cycles: int,
        seed: int,
        min_delay: float,
        max_delay: float,
        failure_dir: Path,
        snapshot_limit: int,
    ) -> None:
        if not 0 <= min_delay <= max_delay:
            raise ValueError(f"need 0 <= min_delay <= max_delay, got {min_delay}, {max_delay}")
        self.workdir = workdir
        self.repo_dir = workdir / "repo"
        self.ack_path = workdir / "acks.jsonl"
        self.writer_log = workdir / "writer-stderr.txt"
        self.pre_check = workdir / "pre-check"
        self.cycles = cycles
        self.seed = seed
        self.min_delay, self.max_delay = min_delay, max_delay
        self.failure_dir = failure_dir
        self.snapshot_limit = snapshot_limit
        self.rng = random.Random(seed)
        self.stats = CrashStats(seed=seed, cycles_requested=cycles, min_delay=min_delay, max_delay=max_delay)
        self.model: _Model
        self.after_kill: Callable[[Path, list[dict]], None] | None = None

    # -- setup ------------------------------------------------------------------------

    def setup(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.repo_dir.exists() or self.ack_path.exists():
            raise ValueError(f"{self.workdir} already holds a crash run; use an empty directory")
        car_keys: dict[str, str] = {}
        car_revs: dict[str, str] = {}

        def make_car(name: str, records: int) -> None:
            rng = random.Random(f"{self.seed}-{name}")
            with Repo.create(self.workdir / f"src-{name.removesuffix('.car')}", DID) as src:
                paths = []
                with src.batch() as batch:
                    for i in range(records):
                        collection = COLLECTIONS[i % len(COLLECTIONS)]
                        rkey = f"src{i:06d}{rng.getrandbits(20):x}"
                        batch.put(collection, rkey, make_record(rng, collection))
                        paths.append((collection, rkey))
                for collection, rkey in rng.sample(paths, 10):  # a few later commits on top
                    src.delete(collection, rkey)
                src.export_car(self.workdir / name)
                car_keys[src.head.encode()] = str(src.did_key)
                car_revs[src.head.encode()] = src.rev

        for name, records, before in CAR_SPECS:
            if before:
                make_car(name, records)
        with Repo.create(self.repo_dir, DID) as repo:  # the key is generated and stored
            created = {"ev": "ack", "run": "setup", "op": "create", "head": repo.head.encode(), "rev": repo.rev}
            repo_key = str(repo.did_key)
        for name, records, before in CAR_SPECS:
            if not before:
                make_car(name, records)
        self.model = _Model(repo_key, car_keys, car_revs)
        self._append_ack(created)
        self.model.add_ack(created)

    # -- the cycle loop -------------------------------------------------------------

    def run(
        self,
        spawn_anchor_fraction: float,
        stop_on_failure: bool,
        final_check: bool,
        progress: Callable[[CrashStats], None] | None,
    ) -> CrashStats:
        started = time.monotonic()
        self.setup()
        try:
            for number in range(1, self.cycles + 1):
                anchor = "spawn" if self.rng.random() < spawn_anchor_fraction else "writer ready"
                cycle = _Cycle(number, self.seed * 1_000_003 + number, anchor)
                try:
                    self.one_cycle(cycle)
                except _CheckError as exc:
                    self.fail(cycle, str(exc), stop_on_failure)
                    if not stop_on_failure:
                        self.resync()
                else:
                    self.stats.survived += 1
                if progress is not None:
                    progress(self.stats)
            if final_check:
                final = _Cycle(self.cycles + 1, 0, "final sweep", phase="final sweep")
                try:
                    self.final_sweep()
                    self.stats.checks["final_sweep"] += 1
                except _CheckError as exc:
                    self.fail(final, str(exc), stop_on_failure)
        finally:
            self.stats.elapsed = time.monotonic() - started
        return self.stats

    def one_cycle(self, cycle: _Cycle) -> None:
        self.stats.cycles += 1
        offset = self.ack_path.stat().st_size
        with open(self.writer_log, "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.crash_writer",
                    str(self.repo_dir),
                    str(self.ack_path),
                    str(cycle.run_seed),
                ],
                cwd=PROJECT_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            if cycle.anchor == "writer ready":
                self.wait_until_ready(proc, offset, cycle)
            cycle.delay = self.rng.uniform(self.min_delay, self.max_delay)
            time.sleep(cycle.delay)
            if proc.poll() is not None:
                with contextlib.suppress(_CheckError):
                    self.read_events(offset, cycle)  # for the message: what it was doing
                raise _CheckError(f"the writer exited by itself (status {proc.returncode}):\n{self.writer_output()}")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.stats.kills += 1
        self.stats.kill_anchor[cycle.anchor] += 1
        self.read_events(offset, cycle)
        self.stats.kills_by_phase[cycle.phase] += 1
        self.snapshot()
        if self.after_kill is not None:
            self.after_kill(self.repo_dir, list(self.model.acks))
        self.check(cycle)

    def wait_until_ready(self, proc: subprocess.Popen, offset: int, cycle: _Cycle) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open(self.ack_path, "rb") as f:
                f.seek(offset)
                if b'"ev":"start"' in f.read():
                    return
            if proc.poll() is not None:
                raise _CheckError(
                    f"the writer exited before opening the repo (status {proc.returncode}):\n{self.writer_output()}"
                )
            time.sleep(0.002)
        raise _CheckError(f"the writer did not open the repo within 60 s:\n{self.writer_output()}")

    def writer_output(self) -> str:
        try:
            return self.writer_log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no writer output)"

    # -- the log ---------------------------------------------------------------------------

    def _append_ack(self, entry: dict) -> None:
        with open(self.ack_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_events(self, offset: int, cycle: _Cycle) -> None:
        """Parse the lines the writer appended; drop a torn last line (and cut it from the file)."""
        with open(self.ack_path, "rb") as f:
            f.seek(offset)
            raw = f.read()
        complete, _, torn = raw.rpartition(b"\n")
        if torn:
            with open(self.ack_path, "r+b") as f:
                f.truncate(offset + len(complete) + (1 if complete else 0))
        model = self.model
        begin: dict | None = None
        for n, line in enumerate(complete.split(b"\n") if complete else []):
            try:
                event = json.loads(line)
            except ValueError:
                raise _CheckError(f"unparseable line {n} in the writer's log: {line[:200]!r}") from None
            kind = event.get("ev")
            if kind == "start":
                cycle.started = True
                if event["head"] != model.last["head"]:
                    raise _CheckError(
                        f"writer_handoff: the writer opened the repo at HEAD {event['head']} (rev {event['rev']}), "
                        f"but the last acknowledged HEAD is {model.last['head']} (rev {model.last['rev']}, "
                        f"op {model.last['op']})"
                    )
                self.stats.checks["writer_handoff"] += 1
            elif kind == "begin":
                begin = event
            elif kind == "ack":
                if begin is None or begin["seq"] != event["seq"] or begin["op"] != event["op"]:
                    raise _CheckError(f"ack without matching begin line: {event}")
                self.check_ack_sequence(begin, event)
                event["effects"] = begin.get("effects")
                event["prev_head"] = model.last["head"]
                model.add_ack(event)
                if event["op"] == "gc":
                    model.prune(event["kept"])
                cycle.new_acks.append(event)
                self.stats.acked_ops += 1
                self.stats.acked_by_op[event["op"]] += 1
                begin = None
            else:
                raise _CheckError(f"unknown line in the writer's log: {event}")
        cycle.inflight = begin
        if begin is not None:
            cycle.phase = f"during {begin['op']}"
        elif cycle.new_acks:
            cycle.phase = f"between ops (after {cycle.new_acks[-1]['op']} returned)"
        elif cycle.started:
            cycle.phase = "idle (repo open, no op begun)"
        else:
            cycle.phase = "startup (before the repo was open)"

    def check_ack_sequence(self, begin: dict, ack: dict) -> None:
        """What an acknowledgement says must agree with the previous one (checked as lines are read)."""
        model = self.model
        op = ack["op"]
        if op in NEW_COMMIT_OPS:
            if ack["head"] in model.commits or ack["head"] in model.observed:
                raise _CheckError(f"revs: {op} seq {ack['seq']} acknowledged an already known commit {ack['head']}")
            if ack["rev"] <= model.max_rev:
                raise _CheckError(
                    f"revs: {op} seq {ack['seq']} (run {ack['run']}) got rev {ack['rev']}, "
                    f"not above the highest rev seen so far {model.max_rev}"
                )
            self.stats.checks["revs"] += 1
        elif op == "import":
            if ack["head"] != begin["root"]:
                raise _CheckError(f"import of {begin['car']} acknowledged HEAD {ack['head']}, not the CAR root")
        elif ack["head"] != model.last["head"] or ack["rev"] != model.last["rev"]:
            raise _CheckError(
                f"{op} seq {ack['seq']} moved HEAD from {model.last['head']} to {ack['head']} (it must not)"
            )

    # -- checks ------------------------------------------------------------------------------

    def check(self, cycle: _Cycle) -> None:
        model, stats = self.model, self.stats
        step = "opens"
        try:
            repo = Repo.open(self.repo_dir, rotate_key=True)  # HEAD may be an imported CAR's, signed by its key
        except Exception as exc:
            raise _CheckError(f"opens: Repo.open raised {type(exc).__name__}: {exc}") from None
        stats.checks["opens"] += 1
        try:
            step = "head_complete"
            head, rev = repo.head.encode(), repo.rev
            tree = repo.checkout()
            repo._state.check_complete(tree.root)
            sum(1 for _ in tree)
            walker = _TreeWalker(repo, self)
            walker.commit(head, model.key_for(head), "HEAD")
            stats.checks["head_complete"] += 1
            if hasattr(repo, "verify"):
                step = "verify"
                try:
                    report = repo.verify(key=model.key_for(head))
                except TypeError:  # a verify() without the key= parameter
                    report = repo.verify()
                if not report.ok:
                    raise _CheckError(f"repo.verify() is not ok: {_report_problems(report)}")
                stats.checks["verify"] += 1

            step = "head_not_lost"
            self.check_head(repo, cycle, head, rev)
            stats.checks["head_not_lost"] += 1

            step = "acked_commits"
            self.check_commits(repo, cycle, walker)
            stats.checks["acked_commits"] += 1

            step = "refs"
            self.check_refs(repo, cycle)
            stats.checks["refs"] += 1

            step = "blobs_read"
            news = [a["cid"] for a in cycle.new_acks if a["op"] == "blob"]
            olds = list(model.blobs)
            self.check_blobs(repo, news + self.rng.sample(olds, min(20, len(olds))))
            if cycle.inflight is not None and cycle.inflight["op"] == "blob":
                self.check_inflight_blob(repo, cycle.inflight)
            stats.checks["blobs_read"] += 1

            step = "blob_files"
            self.check_blob_files(force=False)
            stats.checks["blob_files"] += 1

            step = "integrity"
            self.check_integrity(repo)
            stats.checks["integrity"] += 1

            step = "writable"
            self.checker_put(repo, cycle)
            stats.checks["writable"] += 1
        except _CheckError as exc:
            raise _CheckError(f"{step}: {exc}") from None
        except Exception as exc:
            raise _CheckError(f"{step}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-6)}") from None
        finally:
            repo.close()

    def check_head(self, repo: Repo, cycle: _Cycle, head: str, rev: str) -> None:
        model = self.model
        last = model.last
        if head == last["head"]:
            if rev != last["rev"]:
                raise _CheckError(
                    f"HEAD is the last acknowledged commit {head} but repo.rev is {rev}, not {last['rev']}"
                )
            return
        inflight = cycle.inflight
        expected = f"the last acknowledged HEAD {last['head']} (op {last['op']}, rev {last['rev']})"
        if inflight is None:
            raise _CheckError(f"HEAD is {head} (rev {rev}) but no write was in flight; expected {expected}")
        op = inflight["op"]
        if op in WRITE_OPS:
            if head in model.commits or head in model.observed:
                raise _CheckError(f"HEAD went back to an older commit {head} (rev {rev}); expected {expected}")
            if rev <= model.max_rev:
                raise _CheckError(
                    f"HEAD {head} is an unacknowledged commit with rev {rev}, not above the highest "
                    f"acknowledged rev {model.max_rev}; expected {expected} or a newer commit"
                )
            tree = repo.checkout()
            for path, cid in inflight["effects"].items():
                got = tree.get(path)
                if (None if got is None else got.encode()) != cid:
                    raise _CheckError(
                        f"HEAD {head} is a new commit but does not hold the in-flight {op}'s write {path} -> {cid} "
                        f"(found {got})"
                    )
            # the new commit must hold exactly the last acknowledged tree plus the in-flight writes
            problem = _diff_problem(repo, last["head"], head, inflight["effects"])
            if problem:
                raise _CheckError(
                    f"HEAD {head} is a new commit but not the in-flight {op} applied to {expected}: {problem}"
                )
        elif op == "import" and head == inflight["root"]:
            pass
        else:
            raise _CheckError(f"HEAD is {head} (rev {rev}) while a {op} was in flight; expected {expected}")
        # the in-flight write committed before its ack was written: it is now part of the history
        model.observed[head] = rev
        model.max_rev = max(model.max_rev, rev)
        self.stats.committed_unacked[op] += 1

    def check_commits(self, repo: Repo, cycle: _Cycle, walker: _TreeWalker) -> None:
        model = self.model
        if cycle.inflight is not None and cycle.inflight["op"] == "gc":  # it may have removed them, or not
            model.prune(cycle.inflight["kept"])
        known = model.known_commits()
        kept = set(known)
        for cid in known:  # every commit ever acknowledged (or seen as HEAD) is still stored
            if cid not in repo.blockstore:
                first = model.commits.get(cid) or {"op": "(unacknowledged HEAD)", "run": "?", "seq": "?"}
                raise _CheckError(
                    f"commit {cid} acknowledged by {first['op']} (run {first['run']} seq {first['seq']}) "
                    f"is no longer in the block store"
                )
        new_heads = list(dict.fromkeys(a["head"] for a in cycle.new_acks if a["head"] in kept))
        fresh = set(new_heads)
        olds = [c for c in known if c not in fresh]
        sample_old = self.rng.sample(olds, min(WALK_OLD_SAMPLE, len(olds)))
        for cid in new_heads + sample_old:
            walker.commit(cid, model.key_for(cid), "acknowledged commit")
        for ack in cycle.new_acks:  # what each acknowledged write did is visible in its commit (unless gc took it)
            if ack["op"] not in WRITE_OPS or ack["head"] not in kept:
                continue
            tree = repo.checkout(ack["head"])
            for path, cid in (ack.get("effects") or {}).items():
                got = tree.get(path)
                if (None if got is None else got.encode()) != cid:
                    raise _CheckError(
                        f"acknowledged {ack['op']} (run {ack['run']} seq {ack['seq']}) commit {ack['head']} "
                        f"maps {path} to {got}, expected {cid}"
                    )
        # through the API: checkout, full iteration, completeness check, set_ref; for sampled
        # acknowledged writes also that the commit is exactly the previous one plus those writes
        sample = self.rng.sample(cycle.new_acks, min(API_NEW_SAMPLE, len(cycle.new_acks)))
        for ack in sample:
            if ack["op"] in NEW_COMMIT_OPS and ack.get("prev_head") in kept and ack["head"] in kept:
                problem = _diff_problem(repo, ack["prev_head"], ack["head"], ack.get("effects") or {})
                if problem:
                    raise _CheckError(
                        f"acknowledged {ack['op']} (run {ack['run']} seq {ack['seq']}) commit {ack['head']} is not "
                        f"its writes applied to the previous HEAD {ack['prev_head']}: {problem}"
                    )
        sampled = [a["head"] for a in sample if a["head"] in kept]
        api = [model.last["head"], *sampled, *self.rng.sample(olds, min(API_OLD_SAMPLE, len(olds)))]
        for cid in dict.fromkeys(api):
            sum(1 for _ in repo.checkout(cid))
            repo.set_ref(PROBE_REF, cid)  # checks that the commit's tree is complete
            if repo.ref(PROBE_REF).encode() != cid:
                raise _CheckError(f"set_ref({PROBE_REF!r}, {cid}) did not stick")
            self.stats.api_checkouts += 1

    def check_refs(self, repo: Repo, cycle: _Cycle) -> None:
        model = self.model
        inflight = cycle.inflight
        for name, target in list(model.refs.items()):
            got = repo.ref(name)
            got_s = None if got is None else got.encode()
            if got_s == target:
                continue
            if inflight and inflight["op"] == "set_ref" and inflight["name"] == name and got_s == inflight["target"]:
                model.refs[name] = got_s
                self.stats.committed_unacked["set_ref"] += 1
                continue
            raise _CheckError(f"ref {name!r} points to {got_s}, but the last acknowledged set_ref put it at {target}")

    def check_blobs(self, repo: Repo, cids: list[str]) -> None:
        for cid in dict.fromkeys(cids):
            seed, size = self.model.blobs[cid]
            want = blob_bytes(seed, size)
            if cid_for_raw(want).encode() != cid:
                raise _CheckError(f"blob ack {cid} does not match its seed {seed} / size {size}")
            try:
                got = repo.blob(cid)
            except Exception as exc:
                raise _CheckError(f"acknowledged blob {cid} ({size} bytes) fails to read: {exc}") from None
            if got is None:
                raise _CheckError(f"acknowledged blob {cid} ({size} bytes) is gone")
            if got != want:
                raise _CheckError(f"acknowledged blob {cid} read back {len(got)} different bytes (want {size})")
            self.stats.blob_reads += 1

    def check_inflight_blob(self, repo: Repo, begin: dict) -> None:
        """A killed put_blob left either nothing or the whole blob under its final name."""
        data = blob_bytes(begin["seed"], begin["size"])
        cid = cid_for_raw(data)
        try:
            got = repo.blob(cid)
        except Exception as exc:
            raise _CheckError(f"the interrupted put_blob of {cid.encode()} left a bad file: {exc}") from None
        if got is not None:
            if got != data:
                raise _CheckError(f"the interrupted put_blob of {cid.encode()} reads back wrong bytes")
            if cid.encode() not in self.model.blobs:
                self.stats.committed_unacked["blob"] += 1

    def check_blob_files(self, *, force: bool) -> None:
        """Every final-named file under blobs/ hashes to its name; count leftover temp files."""
        root = self.repo_dir / "blobs"
        tmp = 0
        if not root.exists():
            return
        for shard in os.scandir(root):
            if not shard.is_dir(follow_symlinks=False):
                raise _CheckError(f"unexpected non-directory {shard.path} under blobs/")
            for entry in os.scandir(shard.path):
                if entry.name.startswith(".tmp-"):
                    tmp += 1
                    continue
                st = entry.stat(follow_symlinks=False)
                sig = (st.st_size, st.st_mtime_ns, st.st_ino)
                if not force and self.model.file_sigs.get(entry.path) == sig:
                    continue
                with open(entry.path, "rb") as f:
                    data = f.read()
                actual = cid_for_raw(data).encode()
                if actual != entry.name or shard.name != entry.name[:2]:
                    raise _CheckError(
                        f"blob file {entry.path} ({len(data)} bytes) does not hash to its name "
                        f"(its content is {actual}): a partial or altered file under a final name"
                    )
                self.model.file_sigs[entry.path] = sig
                self.stats.blob_files_hashed += 1
        self.stats.tmp_files_left = tmp

    def check_integrity(self, repo: Repo, *, full: bool = False) -> None:
        pragma = "PRAGMA integrity_check" if full else "PRAGMA quick_check"
        rows = [row[0] for row in repo._state.store.conn.execute(pragma)]
        if rows != ["ok"]:
            raise _CheckError(f"{pragma}: {rows[:10]}")

    def checker_put(self, repo: Repo, cycle: _Cycle) -> None:
        collection = COLLECTIONS[0]
        rkey = f"checker-{self.seed}-{cycle.number}"
        record = make_record(random.Random(cycle.run_seed), collection)
        path = f"{collection}/{rkey}"
        expected = record_cid(record, path)
        cid = repo.put(collection, rkey, record).encode()
        if cid != expected or repo.find(collection, rkey) != record:
            raise _CheckError(f"the checker's put of {path} did not read back")
        ack = {"ev": "ack", "run": "checker", "seq": cycle.number, "op": "checker_put"}
        ack.update(head=repo.head.encode(), rev=repo.rev, key=path, cid=cid)
        self.check_ack_sequence({}, ack)
        self._append_ack(ack)
        self.model.add_ack({**ack, "effects": {path: cid}, "prev_head": self.model.last["head"]})

    def final_sweep(self) -> None:
        """Re-check everything ever acknowledged, every blob file and the whole database."""
        model = self.model
        try:
            repo = Repo.open(self.repo_dir)
        except Exception as exc:
            raise _CheckError(f"final sweep: Repo.open raised {type(exc).__name__}: {exc}") from None
        step = "final sweep"
        try:
            if repo.head.encode() != model.last["head"]:
                raise _CheckError(f"HEAD {repo.head.encode()} is not the last acknowledged {model.last['head']}")
            walker = _TreeWalker(repo, self)
            step = "final sweep: acknowledged commits"
            for cid in model.known_commits():
                walker.commit(cid, model.key_for(cid), "acknowledged commit")
            step = "final sweep: API checkouts"
            known = model.known_commits()
            for cid in self.rng.sample(known, min(30, len(known))):
                tree = repo.checkout(cid)
                sum(1 for _ in tree)
                repo._state.check_complete(tree.root)
                self.stats.api_checkouts += 1
            step = "final sweep: blobs"
            self.check_blobs(repo, list(model.blobs))
            self.check_blob_files(force=True)
            step = "final sweep: integrity"
            self.check_integrity(repo, full=True)
            tree = repo.checkout()
            blob_files = [p for p in (self.repo_dir / "blobs").rglob("*") if p.is_file()]
            self.stats.final = {
                "HEAD records": sum(1 for _ in tree),
                "blocks": len(repo.blockstore),
                "pds.db (+wal) MB": round(sum(p.stat().st_size for p in self.repo_dir.glob("pds.db*")) / 1e6, 1),
                "distinct commits acknowledged": len(model.commits),
                "unacknowledged commits found as HEAD": len(model.observed),
                "blobs acknowledged": len(model.blobs),
                "blob files (incl. .tmp-)": len(blob_files),
                "blob MB": round(sum(p.stat().st_size for p in blob_files) / 1e6, 1),
                "MST nodes / records hash-checked in sweep": f"{len(walker.nodes)} / {len(walker.records)}",
            }
        except _CheckError as exc:
            raise _CheckError(f"{step}: {exc}") from None
        except Exception as exc:
            raise _CheckError(f"{step}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-6)}") from None
        finally:
            repo.close()

    # -- failures --------------------------------------------------------------------------

    def snapshot(self) -> None:
        """Keep a copy of pds.db as the kill left it (before the checker opens it), if small."""
        files = [p for p in self.repo_dir.glob("pds.db*") if p.is_file()]
        if sum(p.stat().st_size for p in files) > self.snapshot_limit:
            shutil.rmtree(self.pre_check, ignore_errors=True)
            return
        self.pre_check.mkdir(exist_ok=True)
        for old in self.pre_check.iterdir():
            old.unlink()
        for p in files:
            shutil.copy2(p, self.pre_check / p.name)

    def fail(self, cycle: _Cycle, what: str, stop: bool) -> None:
        inflight = cycle.inflight
        doing = cycle.phase
        if inflight is not None:
            detail = {k: v for k, v in inflight.items() if k not in ("ev", "effects")}
            if inflight.get("effects"):
                detail["writes"] = len(inflight["effects"])
            doing += f" {detail}"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = self.failure_dir / f"seed{self.seed}-cycle{cycle.number}-{stamp}-{os.getpid()}"
        if cycle.anchor == "final sweep":
            message = f"crash check failed in the final sweep after {self.cycles} cycles (seed {self.seed}): {what}"
        else:
            message = (
                f"crash check failed at cycle {cycle.number}/{self.cycles} (seed {self.seed}, writer run "
                f"{cycle.run_seed}, kill after {cycle.delay:.3f}s from {cycle.anchor}); the writer was killed "
                f"{doing}: {what}"
            )
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(self.workdir, dest)
            (dest / "FAILURE.txt").write_text(message + "\n")
            message += f"\n(repo, log and pre-check copy of pds.db kept at {dest})"
        except OSError as exc:
            message += f"\n(could not copy the work directory to {dest}: {exc})"
        self.stats.failures.append(message)
        if stop:
            failure = CrashCheckFailure(message)
            failure.stats = self.stats
            raise failure

    def resync(self) -> None:
        """After a failure (when going on), trust the repo's current HEAD and refs as the new baseline."""
        with Repo.open(self.repo_dir) as repo:
            ack = {"ev": "ack", "run": "resync", "seq": 0, "op": "resync", "head": repo.head.encode(), "rev": repo.rev}
            refs = {name: cid.encode() for name, cid in repo.list_refs()}
        self._append_ack(ack)
        self.model.add_ack(ack)
        self.model.refs = {n: c for n, c in refs.items() if n in self.model.refs}


class _TreeWalker:
    """Hash-checks a commit and every node and record of its tree, each block once per walker."""

    def __init__(self, repo: Repo, harness: _Harness) -> None:
        self.repo = repo
        self.harness = harness
        self.nodes: set[bytes] = set()
        self.records: set[bytes] = set()
        self.commits: set[str] = set()

    def _get(self, cid: CID, what: str) -> bytes:
        data = self.repo.blockstore.get(cid)
        if data is None:
            raise _CheckError(f"{what} {cid.encode()} is missing")
        try:
            verify_block(cid, data)
        except Exception as exc:
            raise _CheckError(f"{what}: {exc}") from None
        return data

    def commit(self, cid_s: str, key: str | None, what: str) -> Commit | None:
        if cid_s in self.commits:
            return None
        cid = CID.decode(cid_s)
        data = self._get(cid, f"{what}: commit")
        commit = decode_commit(data, cid)
        if commit.did != DID:
            raise _CheckError(f"{what} {cid_s} is for {commit.did}")
        if key is not None:
            commit.verify(load_public_key(key))
        where = f"{what} {cid_s} (rev {commit.rev})"
        stack = [commit.data]
        while stack:
            node_cid = stack.pop()
            if node_cid.cid_bytes in self.nodes:
                continue
            node = decode_node(self._get(node_cid, f"{where}: MST node"), node_cid)
            self.nodes.add(node_cid.cid_bytes)
            stack.extend(link for link in node.links if link is not None)
            for path, value in zip(node.keys, node.vals, strict=True):
                if value.cid_bytes not in self.records:
                    self._get(value, f"{where}: record for {path.decode()}")
                    self.records.add(value.cid_bytes)
        self.commits.add(cid_s)
        self.harness.stats.commits_walked += 1
        return commit


def _diff_problem(repo: Repo, before: str, after: str, effects: dict[str, str | None]) -> str | None:
    """None if the tree of commit ``after`` is the tree of ``before`` with ``effects`` applied."""
    expected = {path: cid.cid_bytes for path, cid in repo.checkout(before)}
    for path, cid in effects.items():
        if cid is None:
            expected.pop(path, None)
        else:
            expected[path] = CID.decode(cid).cid_bytes
    actual = {path: cid.cid_bytes for path, cid in repo.checkout(after)}
    if actual == expected:
        return None
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    changed = sorted(k for k in expected.keys() & actual.keys() if expected[k] != actual[k])
    return (
        f"{len(actual)} records where {len(expected)} were expected; missing {missing[:5]}, "
        f"unexpected {extra[:5]}, different {changed[:5]}"
    )


def _report_problems(report: object) -> str:
    checks = getattr(report, "checks", None)
    if isinstance(checks, dict):
        checks = list(checks.values())
    bad = [
        f"{getattr(c, 'name', '?')}: {getattr(c, 'outcome', '?')} {getattr(c, 'detail', '')}".strip()
        for c in checks or []
        if str(getattr(c, "outcome", "")) not in ("passed", "skipped")
    ]
    return "; ".join(bad) or repr(report)
