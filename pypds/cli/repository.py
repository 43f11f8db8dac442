"""Commands on a whole repository: init, inspect, verify, mst, diff, gc."""

from __future__ import annotations

from collections import (
    Counter,
)
from contextlib import (
    ExitStack,
)
from pathlib import (
    Path,
)

import click

from ..codec.cid import (
    CID,
)
from ..errors import (
    BadSignature,
    counted,
)
from ..keys import (
    PublicKey,
    SigningKey,
    generate_signing_key,
)
from ..mst import (
    diff_trees,
)
from ..mst.inspect import (
    tree_layout,
    tree_stats,
)
from ..mst.nodestore import (
    GetBlock,
    NodeStore,
)
from ..operation import (
    RecordChange,
)
from ..repo.repo import (
    Repo,
)
from ..sync.verify import (
    VerifyReport,
    verify_car,
)
from .common import (
    DID_TYPE,
    DIDKEY_TYPE,
    KEY_ENV,
    CommitChoice,
    InputError,
    Progress,
    Source,
    cid_str,
    commit_options,
    echo,
    emit_json,
    env_key,
    full_cids_option,
    given_key,
    human_size,
    json_option,
    key_file_option,
    open_input,
    open_repo,
    open_source,
    print_info,
    print_rows,
    quiet_option,
    resolve_commit,
    short_cid,
    warn,
)


@click.command("init", short_help="Create a repository.")
@click.argument("path")
@click.option("--did", required=True, type=DID_TYPE, help="The repository's DID.")
@click.option(
    "--key",
    "key_spec",
    metavar="HEX|k256|p256",
    help="k256 / p256 to generate a key on that curve (default: k256), or a key to store as 64 hex "
    "characters: other users can read command lines (ps), so prefer --signing-key-file or "
    f"{KEY_ENV} for an existing key.",
)
@key_file_option
@click.option(
    "--curve", type=click.Choice(["k256", "p256"]), default="k256", show_default=True, help="Curve of a given key."
)
@click.option(
    "--no-store-key",
    is_flag=True,
    help="Do not keep the given key in the repository: give it again (--signing-key-file or "
    f"{KEY_ENV}) on every write.",
)
@json_option
def init_cmd(
    path: str,
    did: str,
    key_spec: str | None,
    signing_key_file: str | None,
    curve: str,
    no_store_key: bool,
    as_json: bool,
) -> None:
    """Create a repository (a directory) with a signed commit over the empty tree.

    The signing key is stored in the repository (pds.db, mode 0600), so
    later writes need no key, unless --no-store-key. It is a new key unless
    one is given with --signing-key-file or --key HEX, or else in the
    PYPDS_SIGNING_KEY environment variable. The key itself is never
    printed: only its did:key.

    \b
    Examples (bob.key: your own key, 64 hex characters, in a file only you can read):
      pypds init ./alice --did did:plc:ewvi7nxzyoun6zhxrhs64oiz --key p256
      pypds init ./bob --did did:plc:w4xbfzo7kqfes5zb7r6qv3rw --signing-key-file bob.key
    """
    key: SigningKey | None
    if key_spec is not None and key_spec not in ("k256", "p256") and not _is_hex(key_spec.strip()):
        raise click.BadParameter(
            "not hex, k256 or p256: give k256 or p256 for a new key on that curve, or a private key "
            "of 64 hex characters",
            param_hint="'--key'",
        )
    if key_spec in ("k256", "p256"):
        if signing_key_file is not None:
            raise click.UsageError(f"--key {key_spec} generates a key: do not give --signing-key-file too")
        key = generate_signing_key(key_spec)
    else:
        key = given_key(key_spec, signing_key_file, curve, "key_spec") or env_key(curve)
    if no_store_key and (key is None or key_spec in ("k256", "p256")):
        raise click.UsageError("--no-store-key needs a key you keep: --signing-key-file FILE or " + KEY_ENV)
    if Path(path).is_file():
        raise InputError(f"{path} is a file, not a directory")
    with Repo.create(path, did, signing_key=key, store_key=not no_store_key) as repo:
        info = {"path": path, "did": repo.did, "didKey": repo.did_key, "head": repo.head.encode(), "rev": repo.rev}
    print_info(info, as_json)


def _is_hex(text: str) -> bool:
    return bool(text) and all(char in "0123456789abcdefABCDEF" for char in text)


@click.command("inspect", short_help="Summarise a repository or CAR.")
@click.argument("src")
@click.option("--key", type=DIDKEY_TYPE, help="did:key to check the commit signature against.")
@commit_options
@json_option
@quiet_option
def inspect_cmd(src: str, key: PublicKey | None, at: CommitChoice, as_json: bool, quiet: bool) -> int:
    """Summarise a repository: DID, commit, rev, MST root, signature, records and blocks.

    Exit status 1 when --key is given and the signature does not verify.
    With --commit or --ref, the commit summarised is that one (the
    repository's stored blocks, refs and blobs are counted as always).

    \b
    Example (with your account's did:key, as `pypds init` printed it):
      pypds inspect alice.car --key did:key:zQ3shuTJkPHbJ6cab2bVBvqcf5vADT7UEfs8h5A2XJdzqXk1U
    """
    with open_source(src, Progress.create(quiet)) as source:
        info = _inspect(source, key, at.resolve(source.repo, src))
    if as_json:
        emit_json(info)
    else:
        _print_inspect(info)
    return 1 if info["signature"]["status"] == "invalid" else 0


def _inspect(source: Source, key: PublicKey | None, chosen: CID | None) -> dict:
    repo = source.repo
    head = chosen or repo.head
    commit = repo.commit(head)
    commit_bytes = len(repo.blockstore.get(head) or b"")
    if key is None:
        signature: dict[str, object] = {"status": "not checked", "key": None}
    else:
        try:
            commit.verify(key)
            signature = {"status": "valid", "key": key.did_key, "highS": commit.high_s(key)}
        except BadSignature:
            signature = {"status": "invalid", "key": key.did_key}
    stats = tree_stats(repo.blockstore.get, commit.data)
    info: dict = {
        "source": source.name,
        "kind": source.kind,
        "did": commit.did,
        "commit": head.encode(),
        "rev": commit.rev,
        "version": commit.version,
        "mstRoot": commit.data.encode(),
        "mstLayer": stats.layer,
        "signature": signature,
        "records": stats.records,
        "collections": dict(sorted(stats.collections.items())),
        "blocks": {
            "commit": {"count": 1, "bytes": commit_bytes},
            "mstNodes": {"count": stats.nodes, "bytes": stats.node_bytes},
            "records": {"count": stats.record_blocks, "bytes": stats.record_bytes},
            "total": {
                "count": 1 + stats.nodes + stats.record_blocks,
                "bytes": commit_bytes + stats.node_bytes + stats.record_bytes,
            },
        },
    }
    if source.kind == "car":
        info["carBytes"] = source.car_bytes
    else:
        blob_dir = repo.path / "blobs"
        blobs = repo.list_blobs()
        info["signingKey"] = repo.did_key
        info["storedBlocks"] = len(repo.blockstore)
        info["refs"] = len(repo.list_refs())
        info["blobs"] = {
            "count": len(blobs),
            "bytes": sum(_file_size(blob_dir / c.encode()[:2] / c.encode()) for c in blobs),
        }
    return info


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _print_inspect(info: dict) -> None:
    sig = info["signature"]
    high_s = ", high-S: accepted for version 2 commits only" if sig.get("highS") else ""
    status = {"valid": f"valid ({sig['key']}{high_s})", "invalid": f"INVALID (not signed by {sig['key']})"}.get(
        sig["status"], "not checked (no --key)"
    )
    version = "3" if info["version"] == 3 else "2 (no rev; a write here makes a version 3 commit)"
    blocks = info["blocks"]

    def count(part: dict) -> tuple[str, str]:
        return str(part["count"]), human_size(part["bytes"])

    source = info["source"]
    if info["kind"] == "car":
        source += f"  (CAR, {human_size(info['carBytes'])})" if info["carBytes"] is not None else "  (CAR)"
    else:
        source += "  (repository)"
    rows: list[tuple[str, ...]] = [
        ("source", source),
        ("did", info["did"]),
        ("commit", info["commit"]),
        ("version", version),
        ("rev", info["rev"] or "none (version 2 commit)"),
        ("mst root", f"{info['mstRoot']}  (layer {info['mstLayer']})"),
        ("signature", click.style(status, fg="red", bold=True) if sig["status"] == "invalid" else status),
    ]
    if info["kind"] == "repo":
        rows.append(("signing key", info["signingKey"] or "none (read-only)"))
    rows.append(("records", str(info["records"])))
    rows.extend((f"  {name}", str(n)) for name, n in info["collections"].items())
    total = blocks["total"]
    rows.append(("blocks", f"{total['count']}  ({human_size(total['bytes'])})"))
    rows.append(("  commit", "  ".join(count(blocks["commit"]))))
    rows.append(("  mst nodes", "  ".join(count(blocks["mstNodes"]))))
    rows.append(("  records", "  ".join(count(blocks["records"]))))
    if info["kind"] == "repo":
        others = info["storedBlocks"] - total["count"]
        kept = f"{others} more than this commit's: other commits and refs, until gc" if others else "this commit's"
        rows.append(("stored blocks", f"{info['storedBlocks']}  ({kept})"))
        rows.append(("refs", str(info["refs"])))
        rows.append(("blobs", f"{info['blobs']['count']}  ({human_size(info['blobs']['bytes'])})"))
    print_rows(rows)


@click.command("verify", short_help="Verify fully; exit status 1 on any failure.")
@click.argument("src")
@click.option("--did", type=DID_TYPE, help="The DID the commit must be for.")
@click.option("--key", type=DIDKEY_TYPE, help="did:key the commit must be signed by.")
@json_option
@quiet_option
def verify_cmd(src: str, did: str | None, key: PublicKey | None, as_json: bool, quiet: bool) -> int:
    """Run every check import runs and print the report; exit status 1 if any check fails.

    A CAR (- for stdin) is checked as it streams in, without being stored; a
    repository directory is checked at HEAD, re-hashing every block, plus its
    blob files. Checks that need --did or --key are skipped without them.

    \b
    Example (with your account's did:key, as `pypds init` printed it):
      pypds verify alice.car --did did:plc:ewvi7nxzyoun6zhxrhs64oiz \\
          --key did:key:zQ3shuTJkPHbJ6cab2bVBvqcf5vADT7UEfs8h5A2XJdzqXk1U
    """
    progress = Progress.create(quiet)
    if src != "-" and Path(src).is_dir():
        with open_repo(src) as repo, progress.steps("verifying"):
            report = repo.verify(key=key, did=did)
    else:
        with open_input(src) as (stream, size), progress.reading(stream, "verifying", size) as reader:
            report = verify_car(reader, did=did, key=key)
    if as_json:
        emit_json(_report_json(src, report))
    else:
        _print_report(src, report)
    return 0 if report.ok else 1


def _report_json(src: str, report: VerifyReport) -> dict:
    return {
        "source": src,
        "ok": report.ok,
        "commit": cid_str(report.commit),
        "did": report.did,
        "rev": report.rev,
        "blocks": report.blocks or None,
        "nodes": report.nodes,
        "records": report.records,
        "checks": [{"name": c.name, "outcome": c.outcome.value, "detail": c.detail} for c in report.checks],
    }


def _print_report(src: str, report: VerifyReport) -> None:
    colors = {"passed": "green", "failed": "red", "skipped": "yellow", "not run": "yellow"}
    header = [("source", src), ("commit", cid_str(report.commit) or "-"), ("did", report.did or "-")]
    header.append(("rev", report.rev or ("none (version 2 commit)" if report.version == 2 else "-")))
    print_rows(header)
    echo()
    rows = [(c.name, c.outcome.value, c.detail) for c in report.checks]
    rows.append(("result", "OK" if report.ok else "FAILED", ""))
    print_rows(rows, {1: lambda s: click.style(s, fg=colors.get(s.strip(), "green" if s.strip() == "OK" else "red"))})


@click.command("mst", short_help="Draw the MST, layer by layer.")
@click.argument("src")
@full_cids_option
@commit_options
@json_option
@quiet_option
def mst_cmd(src: str, full_cids: bool, at: CommitChoice, as_json: bool, quiet: bool) -> None:
    """Draw the Merkle Search Tree: every node on its layer, with its keys.

    Each node shows its CID and layer; its keys and child nodes follow in key
    order, indented one step. CIDs are shortened (first 8 and last 4
    characters) unless --full-cids.

    \b
    Example:
      pypds mst ./alice
    """
    with open_source(src, Progress.create(quiet)) as source:
        repo = source.repo
        root = repo.commit(at.resolve(repo, src)).data
        nodes = tree_layout(repo.blockstore.get, root)
    if as_json:
        emit_json({"root": root.encode(), "layer": nodes[0]["layer"], "nodes": nodes})
        return
    _draw_mst(nodes, full_cids)


def _draw_mst(nodes: list[dict], full: bool) -> None:
    by_cid = {node["cid"]: node for node in nodes}

    def label(node: dict) -> str:
        keys = len(node["entries"])
        return f"{short_cid(node['cid'], full)}  layer {node['layer']}, {counted(keys, 'key')}"

    def items(node: dict) -> list[tuple]:
        out: list[tuple] = [("node", node["left"])] if node["left"] else []
        for entry in node["entries"]:
            out.append(("key", entry["key"], entry["value"]))
            if entry["right"]:
                out.append(("node", entry["right"]))
        return out

    lines: list[tuple[str, str | None]] = [(label(nodes[0]), None)]  # (text, cid column for keys)
    stack: list[list] = [[items(nodes[0]), 0, ""]]
    while stack:
        frame = stack[-1]
        entries, index, prefix = frame
        if index == len(entries):
            stack.pop()
            continue
        frame[1] += 1
        last = index == len(entries) - 1
        branch = prefix + ("└── " if last else "├── ")
        item = entries[index]
        if item[0] == "key":
            lines.append((branch + item[1], short_cid(item[2], full)))
        else:
            child = by_cid[item[1]]
            lines.append((branch + label(child), None))
            stack.append([items(child), 0, prefix + ("    " if last else "│   ")])
    width = max((len(text) for text, cid in lines if cid is not None), default=0)
    for text, cid in lines:
        echo(text if cid is None else f"{text.ljust(width)}  {cid}")
    layers = Counter(node["layer"] for node in nodes)
    keys: Counter[int] = Counter()
    for node in nodes:
        keys[node["layer"]] += len(node["entries"])
    echo()
    print_rows(
        [
            (f"layer {layer}", counted(layers[layer], "node"), counted(keys[layer], "key"))
            for layer in sorted(layers, reverse=True)
        ]
    )


def _blocks_of(repos: list[Repo]) -> GetBlock:
    """A block source reading from several repositories (the first that has the block)."""

    def get(cid: CID) -> bytes | None:
        for repo in repos:
            data = repo.blockstore.get(cid)
            if data is not None:
                return data
        return None

    return get


@click.command("diff", short_help="Record changes between two repos or commits.")
@click.argument("a")
@click.argument("b", required=False)
@click.option(
    "--repo",
    "repo_path",
    metavar="PATH",
    help="Compare two commits of this repository: A and B are refs, commit CIDs or HEAD (B defaults to HEAD).",
)
@click.option("--exit-code", is_flag=True, help="Exit with status 1 when there are differences.")
@full_cids_option
@json_option
@quiet_option
def diff_cmd(
    a: str, b: str | None, repo_path: str | None, exit_code: bool, full_cids: bool, as_json: bool, quiet: bool
) -> int:
    """Record-level creates, updates and deletes from A to B.

    A and B are repository directories or CAR files (one may be - for
    stdin). With --repo PATH they name refs, commit CIDs or HEAD of that
    repository instead.

    \b
    Examples:
      pypds diff before.car after.car
      pypds diff --repo ./alice before-cleanup HEAD
    """
    if repo_path is not None:
        with open_repo(repo_path) as repo:
            old, new = resolve_commit(repo, a), resolve_commit(repo, b or "HEAD")
            changes = repo.diff(old, new)
    else:
        if b is None:
            raise click.UsageError("needs two sources A and B (or --repo PATH to compare refs or commits)")
        if a == "-" and b == "-":
            raise click.UsageError("only one of A and B can be - (stdin)")
        for name in (a, b):
            if name != "-" and not Path(name).exists():
                raise InputError(f"{name}: no such file or directory (use --repo PATH to compare refs or commits)")
        progress = Progress.create(quiet)
        with ExitStack() as stack:
            left = stack.enter_context(open_source(a, progress))
            right = stack.enter_context(open_source(b, progress))
            if left.repo.did != right.repo.did:
                dids = f"{a} is {left.repo.did}, {b} is {right.repo.did}"
                warn(f"comparing two different accounts ({dids}): the changes are between their records")
            # The two sides may belong to different DIDs (a fork, a migration), which one
            # repository cannot hold, so rather than importing both into one repo the trees are
            # compared with diff_trees over a node source that reads from both. Each side is a
            # stored repository or a CAR fully verified on loading; diff_trees only loads the
            # subtrees whose CIDs differ.
            source = NodeStore(_blocks_of([left.repo, right.repo]))
            changes = list(diff_trees(source, left.repo.commit().data, right.repo.commit().data))
    _print_changes(changes, full_cids, as_json)
    return 1 if exit_code and changes else 0


def _print_changes(changes: list[RecordChange], full: bool, as_json: bool) -> None:
    if as_json:
        emit_json([{"path": c.path, "action": c.action, "old": cid_str(c.old), "new": cid_str(c.new)} for c in changes])
        return
    marks = {"create": ("+", "green"), "update": ("~", "yellow"), "delete": ("-", "red")}
    rows = []
    for change in changes:
        if change.action == "update":
            cids = f"{short_cid(change.old, full)} -> {short_cid(change.new, full)}"
        else:
            cids = short_cid(change.new if change.action == "create" else change.old, full)
        rows.append((marks[change.action][0], change.path, cids))
    colors = {mark: color for mark, color in marks.values()}
    print_rows(rows, {0: lambda s: click.style(s, fg=colors.get(s.strip()))})
    tally = Counter(c.action for c in changes)
    echo(f"{tally['create']} created, {tally['update']} updated, {tally['delete']} deleted")


@click.command("gc", short_help="Remove unreachable blocks and blobs; give the space back.")
@click.argument("path")
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@click.option(
    "--no-vacuum",
    is_flag=True,
    help="Do not rewrite pds.db afterwards (by default it is, when a tenth of it is free).",
)
@json_option
def gc_cmd(path: str, dry_run: bool, no_vacuum: bool, as_json: bool) -> None:
    """Remove every block neither HEAD nor a ref reaches, and every blob file (older than an hour)
    no record there references; then rewrite pds.db so that the file shrinks.

    Older commits go unless a ref keeps them (`pypds ref set`). The rewrite
    (SQLite VACUUM) is crash-safe and holds the write lock while it runs.

    \b
    Examples:
      pypds gc ./alice --dry-run
      pypds gc ./alice
    """
    with open_repo(path) as repo:
        report = repo.gc(dry_run=dry_run, vacuum=False if no_vacuum else None)
    info = {
        "path": path,
        "dryRun": report.dry_run,
        "blocks": report.blocks,
        "blockBytes": report.block_bytes,
        "blobs": report.blobs,
        "blobBytes": report.blob_bytes,
        "dbBytesBefore": report.db_bytes_before,
        "dbBytesAfter": report.db_bytes_after,
        "vacuumed": report.vacuumed,
    }
    if as_json:
        emit_json(info)
        return
    verb = "would remove" if dry_run else "removed"
    size = human_size(report.db_bytes_before)
    if not dry_run:
        size += f" -> {human_size(report.db_bytes_after)}" + (" (vacuumed)" if report.vacuumed else "")
    print_rows(
        [
            ("blocks", f"{report.blocks} {verb} ({human_size(report.block_bytes)})"),
            ("blobs", f"{report.blobs} {verb} ({human_size(report.blob_bytes)})"),
            ("pds.db", size),
        ]
    )


#: The commands this module defines (see pypds.cli.app.COMMAND_MODULES).
COMMANDS = [init_cmd, inspect_cmd, verify_cmd, mst_cmd, diff_cmd, gc_cmd]
