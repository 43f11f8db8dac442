"""Commands on HEAD, history and named refs: head, revert, ref ls/set/rm."""

from __future__ import annotations

from collections import Counter

import click

from .common import (
    Signer,
    echo,
    emit_json,
    json_option,
    open_repo,
    print_info,
    print_rows,
    resolve_commit,
    rev_text,
    signing_key_options,
)


@click.group("ref", short_help="List, set and delete named refs.")
def ref_group() -> None:
    """Named refs: pointers to commits kept in the repository.

    \b
    Example:
      pypds ref set ./alice before-cleanup HEAD
    """


@ref_group.command("ls", short_help="List refs.")
@click.argument("path")
@json_option
def ref_ls_cmd(path: str, as_json: bool) -> None:
    """List refs with their commit CIDs and revs.

    \b
    Example:
      pypds ref ls ./alice
    """
    with open_repo(path) as repo:
        refs = [(name, cid, repo.commit(cid).rev) for name, cid in repo.list_refs()]
    if as_json:
        emit_json([{"name": name, "commit": cid.encode(), "rev": rev} for name, cid, rev in refs])
    else:
        print_rows([(name, cid.encode(), rev_text(rev)) for name, cid, rev in refs])


@ref_group.command("set", short_help="Point a ref at a commit.")
@click.argument("path")
@click.argument("name")
@click.argument("target", metavar="[HEAD|REF|CID]", default="HEAD")
@json_option
def ref_set_cmd(path: str, name: str, target: str, as_json: bool) -> None:
    """Point a ref at a commit (default: HEAD), creating or moving it.

    \b
    Example:
      pypds ref set ./alice before-cleanup
    """
    with open_repo(path) as repo:
        cid = resolve_commit(repo, target)
        repo.set_ref(name, cid)
        info = {"name": name, "commit": cid.encode(), "rev": repo.commit(cid).rev}
    print_info(info, as_json)


@ref_group.command("rm", short_help="Delete a ref.")
@click.argument("path")
@click.argument("name")
def ref_rm_cmd(path: str, name: str) -> None:
    """Delete a ref (the commits it pointed to stay).

    \b
    Example:
      pypds ref rm ./alice before-cleanup
    """
    with open_repo(path) as repo:
        repo.delete_ref(name)


@click.command("head", short_help="Print or move HEAD.")
@click.argument("path")
@click.option("--set", "target", metavar="REF|CID", help="Move HEAD to this ref or stored commit first.")
@json_option
def head_cmd(path: str, target: str | None, as_json: bool) -> None:
    """Print HEAD (the current commit) and its rev, or move it with --set.

    --set moves history back: copies of the repository (downloads with
    --since, apply_car) then refuse to follow. To go back so that copies
    follow, use `pypds revert`.

    \b
    Examples:
      pypds head ./alice
      pypds head ./alice --set before-cleanup
    """
    with open_repo(path) as repo:
        if target is not None:
            repo.set_head(resolve_commit(repo, target))
        commit = repo.commit()
        info = {"head": repo.head.encode(), "rev": commit.rev, "mstRoot": commit.data.encode()}
    print_info(info, as_json)


@click.command("revert", short_help="Write a new commit with an older commit's tree.")
@click.argument("path")
@click.argument("target", metavar="REF|COMMIT")
@signing_key_options
@json_option
def revert_cmd(path: str, target: str, signer: Signer, as_json: bool) -> None:
    """Write a new signed commit whose records are exactly those of REF|COMMIT.

    History moves forward (a new commit with the next rev, on top of HEAD),
    so copies of the repository follow it as any update, unlike
    `pypds head --set`. When HEAD already has that tree, nothing is written.

    \b
    Example:
      pypds revert ./alice before-cleanup
    """
    with open_repo(path, signer=signer) as repo:
        cid = resolve_commit(repo, target)
        result = repo.revert(cid)
        head, rev = repo.head, repo.rev
    tally = Counter(change.action for change in result.changes)
    info = {
        "path": path,
        "target": cid.encode(),
        "commit": None if result.commit is None else result.commit.encode(),
        "rev": rev if result.commit is not None else None,
        "created": tally["create"],
        "updated": tally["update"],
        "deleted": tally["delete"],
    }
    if as_json:
        emit_json(info)
    elif result.commit is None:
        echo(f"HEAD of {path} ({head.encode()}) already has the records of {cid.encode()}: nothing written")
    else:
        echo(
            f"reverted {path} to the records of {cid.encode()}: {tally['create']} created, "
            f"{tally['update']} updated, {tally['delete']} deleted"
        )
        echo(f"new commit {head.encode()}  rev {rev}")


#: The commands this module defines (see pypds.cli.app.COMMAND_MODULES).
COMMANDS = [head_cmd, revert_cmd, ref_group]
