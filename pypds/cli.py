"""The ``pypds`` command line: a thin shell over :class:`pypds.Repo`.

Exit status: 0 success, 1 a check failed (bad signature, corrupt data),
2 usage or input error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cbrrr

from .errors import IntegrityError, PypdsError
from .repo import Repo


def _cmd_init(args: argparse.Namespace) -> None:
    with Repo.create(args.path, args.did) as repo:
        print(f"created {args.path}\ndid      {repo.did}\ndid:key  {repo.did_key}\nhead     {repo.head.encode()}")


def _cmd_import(args: argparse.Namespace) -> None:
    path = Path(args.path)
    source = sys.stdin.buffer if args.car == "-" else args.car
    if (path / "pds.db").exists():
        with Repo.open(path) as repo:
            count = repo.import_car(source, key=args.key)
            head = repo.head
    else:
        with Repo.from_car(path, source, key=args.key) as repo:
            count = len(repo.blockstore)
            head = repo.head
    print(f"imported {count} blocks, head {head.encode()}")


def _cmd_export(args: argparse.Namespace) -> None:
    with Repo.open(args.path) as repo:
        if args.output in (None, "-"):
            repo.export_car(sys.stdout.buffer)
        else:
            repo.export_car(args.output)


def _cmd_ls(args: argparse.Namespace) -> None:
    with Repo.open(args.path) as repo:
        collections = [args.collection] if args.collection else repo.collections()
        for collection in collections:
            for rkey, cid in repo.list(collection):
                print(f"{collection}/{rkey}\t{cid.encode()}")


def _cmd_get(args: argparse.Namespace) -> None:
    with Repo.open(args.path) as repo:
        data = repo.find_bytes(args.collection, args.rkey)
    if data is None:
        raise PypdsError(f"no record at {args.collection}/{args.rkey}")
    print(json.dumps(cbrrr.decode_dag_cbor(data, atjson_mode=True), indent=2, ensure_ascii=False))


def _cmd_info(args: argparse.Namespace) -> None:
    with Repo.open(args.path) as repo:
        commit = repo.commit()
        view = repo.checkout()
        rows = [
            ("did", repo.did),
            ("head", repo.head.encode()),
            ("rev", commit.rev),
            ("data", commit.data.encode()),
            ("records", str(len(view))),
            ("collections", ", ".join(repo.collections()) or "-"),
            ("blocks", str(len(repo.blockstore))),
            ("signing key", repo.did_key or "none (read-only)"),
        ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pypds", description="atproto repository storage engine")
    sub = parser.add_subparsers(dest="command", required=True)

    cmd = sub.add_parser("init", help="create a repository", epilog="example: pypds init ./repo --did did:plc:abc")
    cmd.add_argument("path")
    cmd.add_argument("--did", required=True)
    cmd.set_defaults(run=_cmd_init)

    cmd = sub.add_parser(
        "import",
        help="import a CAR (creating the repo if needed)",
        epilog="example: pypds import ./repo backup.car --key did:key:z...",
    )
    cmd.add_argument("path")
    cmd.add_argument("car", help="CAR file, or - for stdin")
    cmd.add_argument("--key", help="did:key to check the commit signature against")
    cmd.set_defaults(run=_cmd_import)

    cmd = sub.add_parser(
        "export", help="write the repository as a CAR", epilog="example: pypds export ./repo -o backup.car"
    )
    cmd.add_argument("path")
    cmd.add_argument("-o", "--output", help="output file (default: stdout)")
    cmd.set_defaults(run=_cmd_export)

    cmd = sub.add_parser("ls", help="list record paths and CIDs", epilog="example: pypds ls ./repo app.bsky.feed.post")
    cmd.add_argument("path")
    cmd.add_argument("collection", nargs="?")
    cmd.set_defaults(run=_cmd_ls)

    cmd = sub.add_parser(
        "get",
        help="print one record as atproto JSON",
        epilog="example: pypds get ./repo app.bsky.feed.post 3jui7kd54zh2y",
    )
    cmd.add_argument("path")
    cmd.add_argument("collection")
    cmd.add_argument("rkey")
    cmd.set_defaults(run=_cmd_get)

    cmd = sub.add_parser("info", help="summarise a repository", epilog="example: pypds info ./repo")
    cmd.add_argument("path")
    cmd.set_defaults(run=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pypds`` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except IntegrityError as exc:
        print(f"pypds: {exc}", file=sys.stderr)
        return 1
    except (PypdsError, OSError) as exc:
        print(f"pypds: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
