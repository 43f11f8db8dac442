"""Read-only commands: each takes a repository directory or a CAR file (``-``: stdin)."""

from __future__ import annotations

import json
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import click

from ..codec import cbor
from ..codec.atjson import to_json
from ..codec.cid import CID
from ..errors import BadSignature, MissingBlock, RecordNotFound
from ..keys import PublicKey
from ..mst import TreeWalk, diff_trees, key_height, walk_tree
from ..mst.node import link_cid
from ..mst.nodestore import GetBlock, NodeStore
from ..operation import RecordChange
from ..repo.repo import Repo
from ..sync.verify import VerifyReport, verify_car
from ._common import (
    DID_TYPE,
    DIDKEY_TYPE,
    InputError,
    Progress,
    Source,
    binary_output,
    cid_str,
    echo,
    emit_json,
    full_cids_option,
    human_size,
    json_option,
    open_input,
    open_repo,
    open_source,
    print_rows,
    quiet_option,
    resolve_commit,
    short_cid,
)

# -- ls, collections, get --------------------------------------------------------------


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


# -- inspect --------------------------------------------------------------------------


@dataclass
class TreeStats:
    """What a checked walk of one tree found."""

    nodes: int = 0
    node_bytes: int = 0
    records: int = 0
    record_blocks: int = 0
    record_bytes: int = 0
    layer: int = 0
    collections: Counter = field(default_factory=Counter)


def tree_stats(repo: Repo, root: CID) -> TreeStats:
    """Walk the tree at ``root`` (checking it) and count nodes, records and bytes."""
    stats = TreeStats()
    walk = TreeWalk()
    seen: set[bytes] = set()
    for step in walk_tree(repo.blockstore.get, root, stats=walk):
        if step.node is not None:
            stats.nodes += 1
            stats.node_bytes += len(step.node.data)
            continue
        stats.records += 1
        stats.collections[(step.key or b"").split(b"/", 1)[0].decode()] += 1
        if step.cid.cid_bytes in seen:
            continue
        seen.add(step.cid.cid_bytes)
        data = repo.blockstore.get(step.cid)
        if data is None:
            raise MissingBlock(f"record {step.cid.encode()} is missing", step.cid)
        stats.record_blocks += 1
        stats.record_bytes += len(data)
    stats.layer = walk.height
    return stats


@click.command("inspect", short_help="Summarise a repository or CAR.")
@click.argument("src")
@click.option("--key", type=DIDKEY_TYPE, help="did:key to check the commit signature against.")
@json_option
@quiet_option
def inspect_cmd(src: str, key: PublicKey | None, as_json: bool, quiet: bool) -> int:
    """Summarise a repository: DID, commit, rev, MST root, signature, records and blocks.

    Exit status 1 when --key is given and the signature does not verify.

    \b
    Example (with your account's did:key, as `pypds init` printed it):
      pypds inspect alice.car --key did:key:zQ3shuTJkPHbJ6cab2bVBvqcf5vADT7UEfs8h5A2XJdzqXk1U
    """
    with open_source(src, Progress.create(quiet)) as source:
        info = _inspect(source, key)
    if as_json:
        emit_json(info)
    else:
        _print_inspect(info)
    return 1 if info["signature"]["status"] == "invalid" else 0


def _inspect(source: Source, key: PublicKey | None) -> dict:
    repo = source.repo
    head = repo.head
    commit = repo.commit()
    commit_bytes = len(repo.blockstore.get(head) or b"")
    if key is None:
        signature: dict[str, object] = {"status": "not checked", "key": None}
    else:
        try:
            commit.verify(key)
            signature = {"status": "valid", "key": key.did_key, "highS": commit.high_s(key)}
        except BadSignature:
            signature = {"status": "invalid", "key": key.did_key}
    stats = tree_stats(repo, commit.data)
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
        rows.append(("stored blocks", f"{info['storedBlocks']}  (every commit kept)"))
        rows.append(("refs", str(info["refs"])))
        rows.append(("blobs", f"{info['blobs']['count']}  ({human_size(info['blobs']['bytes'])})"))
    print_rows(rows)


# -- mst ------------------------------------------------------------------------------


@click.command("mst", short_help="Draw the MST, layer by layer.")
@click.argument("src")
@full_cids_option
@json_option
@quiet_option
def mst_cmd(src: str, full_cids: bool, as_json: bool, quiet: bool) -> None:
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
        root = repo.commit().data
        nodes = _mst_nodes(repo, root)
    if as_json:
        emit_json({"root": root.encode(), "layer": nodes[0]["layer"], "nodes": nodes})
        return
    _draw_mst(nodes, full_cids)


def _mst_nodes(repo: Repo, root: CID) -> list[dict]:
    """Every node in pre-order as a dict: cid, layer, depth, parent, left link and entries."""
    out: list[dict] = []
    source = NodeStore(repo.blockstore.get, where=str(repo.path), cache_size=0)
    stack: list[tuple[CID, int, int, str | None]] = [(root, -1, 0, None)]
    while stack:
        cid, layer, depth, parent = stack.pop()
        node = source.load_node(cid)
        if layer < 0:
            layer = key_height(node.keys[0]) if node.keys else 0
        links = [link_cid(link) for link in node.links]
        out.append(
            {
                "cid": cid.encode(),
                "layer": layer,
                "depth": depth,
                "parent": parent,
                "left": cid_str(links[0]),
                "entries": [
                    {"key": key.decode(), "value": node.vals[i].encode(), "right": cid_str(links[i + 1])}
                    for i, key in enumerate(node.keys)
                ],
            }
        )
        children = [link for link in links if link is not None]
        stack.extend((child, layer - 1, depth + 1, cid.encode()) for child in reversed(children))
    return out


def _draw_mst(nodes: list[dict], full: bool) -> None:
    by_cid = {node["cid"]: node for node in nodes}

    def label(node: dict) -> str:
        keys = len(node["entries"])
        return f"{short_cid(node['cid'], full)}  layer {node['layer']}, {keys} key{'s' if keys != 1 else ''}"

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
            (f"layer {layer}", f"{layers[layer]} node{'s' if layers[layer] != 1 else ''}", f"{keys[layer]} keys")
            for layer in sorted(layers, reverse=True)
        ]
    )


# -- unpack ---------------------------------------------------------------------------


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
        echo(f"unpacked {records} records in {len(counts)} collections to {out_dir} (commit {head.encode()})")


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(to_json(value), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# -- diff -----------------------------------------------------------------------------


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


# -- verify ---------------------------------------------------------------------------


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


# -- compact --------------------------------------------------------------------------


@click.command("compact", short_help="Rewrite a CAR: reachable blocks, stream order.")
@click.argument("src", metavar="IN")
@click.argument("out", metavar="OUT")
@json_option
@quiet_option
def compact_cmd(src: str, out: str, as_json: bool, quiet: bool) -> None:
    """Rewrite a CAR with only the blocks its tree reaches, in stream order.

    IN is loaded with full verification (- for stdin; a repository directory
    works too), then written to OUT (- for stdout) as commit, then each MST
    node before its children with records in key order: the order the repo
    spec recommends for streaming consumers. Unreachable blocks are dropped.

    \b
    Example:
      pypds compact messy.car clean.car
    """
    progress = Progress.create(quiet)
    with open_source(src, progress) as source:
        repo = source.repo
        blocks = len(repo.blockstore) if source.kind == "car" else None
        with binary_output(out, "a CAR") as stream, progress.writing(stream, "writing") as writer:
            repo.export_car(writer)
        head = repo.head
        if blocks is None:
            stats = tree_stats(repo, repo.commit().data)
            blocks = 1 + stats.nodes + stats.record_blocks
    if out == "-":
        return
    info = {
        "input": src,
        "output": out,
        "commit": head.encode(),
        "inputBytes": source.car_bytes,
        "outputBytes": writer.count,
        "blocks": blocks,
    }
    if as_json:
        emit_json(info)
    else:
        before = f" from {human_size(source.car_bytes)}" if source.car_bytes is not None else ""
        echo(f"wrote {out}: {blocks} blocks, {human_size(writer.count)}{before} (commit {head.encode()})")


READ_COMMANDS = [
    ls_cmd,
    collections_cmd,
    get_cmd,
    inspect_cmd,
    mst_cmd,
    unpack_cmd,
    diff_cmd,
    verify_cmd,
    compact_cmd,
]
