"""Commands on CAR files: import, export, compact."""

from __future__ import annotations

from pathlib import (
    Path,
)

import click

from ..errors import (
    counted,
)
from ..keys import (
    PublicKey,
)
from ..mst.inspect import (
    tree_stats,
)
from ..repo.repo import (
    Repo,
)
from .common import (
    DIDKEY_TYPE,
    CommitChoice,
    InputError,
    Progress,
    binary_output,
    commit_options,
    echo,
    emit_json,
    human_size,
    json_option,
    open_input,
    open_repo,
    open_source,
    quiet_option,
    rev_text,
    warn,
)


@click.command("import", short_help="Import a CAR (creates the repo if needed).")
@click.argument("path")
@click.argument("car")
@click.option("--key", type=DIDKEY_TYPE, help="did:key the CAR's commit must be signed by.")
@json_option
@quiet_option
def import_cmd(path: str, car: str, key: PublicKey | None, as_json: bool, quiet: bool) -> None:
    """Import a repository CAR (- for stdin), creating the repository if needed.

    Everything is verified before anything is written; into an existing
    repository the CAR must be for the same DID, and HEAD moves to its commit.

    \b
    Example (with your account's did:key, as `pypds init` printed it):
      pypds import ./copy alice.car --key did:key:zQ3shuTJkPHbJ6cab2bVBvqcf5vADT7UEfs8h5A2XJdzqXk1U
    """
    target = Path(path)
    if target.is_file():
        raise InputError(f"{path} is a file, not a repository directory")
    progress = Progress.create(quiet)
    with open_input(car) as (stream, size), progress.reading(stream, "importing", size) as reader:
        if (target / "pds.db").exists():
            with open_repo(path) as repo:
                blocks = repo.import_car(reader, key=key)
                head, rev, did = repo.head, repo.rev, repo.did
                if repo.signing_key_matches_head() is False:
                    warn(
                        f"HEAD of {path} is now signed by another key than the stored {repo.did_key}: "
                        "writes signed by the stored key need --rotate-key"
                    )
            created = False
        else:
            with Repo.from_car(target, reader, key=key) as repo:
                blocks = len(repo.blockstore)
                head, rev, did = repo.head, repo.rev, repo.did
            created = True
    info = {
        "path": path,
        "created": created,
        "did": did,
        "head": head.encode(),
        "rev": rev,
        "blocks": blocks,
        "bytes": reader.count,
        "signature": "valid" if key is not None else "not checked",
    }
    if as_json:
        emit_json(info)
    else:
        verb = "created" if created else "updated"
        echo(f"{verb} {path}: imported {counted(blocks, 'block')} ({human_size(reader.count)}), did {did}")
        echo(f"head {head.encode()}  rev {rev_text(rev)}  signature {info['signature']}")


@click.command("export", short_help="Write a repository as a CAR.")
@click.argument("path")
@click.option("-o", "--output", metavar="OUT.car", help="Output file (default or -: stdout).")
@commit_options
@json_option
@quiet_option
def export_cmd(path: str, output: str | None, at: CommitChoice, as_json: bool, quiet: bool) -> None:
    """Write the repository as a CAR: commit, every MST node, every record, in stream order.

    A file is written atomically; a summary is printed only then.

    \b
    Example:
      pypds export ./alice -o alice.car
    """
    to_stdout = output in (None, "-")
    if as_json and to_stdout:
        raise click.UsageError("--json needs -o FILE (stdout carries the CAR)")
    progress = Progress.create(quiet)
    with open_repo(path) as repo:
        commit = at.resolve(repo, path) or repo.head
        with binary_output(output, "a CAR") as stream, progress.writing(stream, "exporting") as writer:
            repo.export_car(writer, commit=commit)
        rev = repo.commit(commit).rev
    if to_stdout:
        return
    info = {"path": path, "output": output, "commit": commit.encode(), "rev": rev, "bytes": writer.count}
    if as_json:
        emit_json(info)
    else:
        label = "version 2, no rev" if rev is None else f"rev {rev}"
        echo(f"exported {commit.encode()} ({label}) to {output}: {human_size(writer.count)}")


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
            stats = tree_stats(repo.blockstore.get, repo.commit().data)
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
        echo(f"wrote {out}: {counted(blocks, 'block')}, {human_size(writer.count)}{before} (commit {head.encode()})")


#: The commands this module defines (see pypds.cli.app.COMMAND_MODULES).
COMMANDS = [import_cmd, export_cmd, compact_cmd]
