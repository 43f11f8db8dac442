"""Commands on HEAD and named refs: head, ref ls/set/rm."""

from __future__ import annotations

import click

from .common import (
    emit_json,
    json_option,
    open_repo,
    print_info,
    print_rows,
    resolve_commit,
    rev_text,
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


REF_COMMANDS = [head_cmd, ref_group]
