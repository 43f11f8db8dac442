"""Commands on a repository directory: create, import, export, write records, refs, HEAD, blobs."""

from __future__ import annotations

import mimetypes
from pathlib import Path

import click

from ..codec.atjson import from_json
from ..codec.cid import CID
from ..errors import NotFound
from ..keys import PublicKey, SigningKey, generate_signing_key
from ..repo.repo import Repo
from ._common import (
    CID_TYPE,
    DID_TYPE,
    DIDKEY_TYPE,
    KEY_ENV,
    MAX_BLOB_INPUT_BYTES,
    InputError,
    Progress,
    Signer,
    binary_output,
    echo,
    emit_json,
    env_key,
    given_key,
    human_size,
    json_option,
    key_file_option,
    open_input,
    open_repo,
    print_rows,
    quiet_option,
    read_capped,
    read_json_input,
    resolve_commit,
    rev_text,
    signing_key_options,
    warn,
)

# -- init, import, export ------------------------------------------------------------


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
    _print_info(info, as_json)


def _print_info(info: dict, as_json: bool) -> None:
    if as_json:
        emit_json(info)
    else:
        print_rows([(name, "-" if value is None else str(value)) for name, value in info.items()])


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
        echo(f"{verb} {path}: imported {blocks} blocks ({human_size(reader.count)}), did {did}")
        echo(f"head {head.encode()}  rev {rev_text(rev)}  signature {info['signature']}")


@click.command("export", short_help="Write a repository as a CAR.")
@click.argument("path")
@click.option("-o", "--output", metavar="OUT.car", help="Output file (default or -: stdout).")
@click.option("--commit", "commit_spec", metavar="REF|CID", help="Export this ref or commit instead of HEAD.")
@json_option
@quiet_option
def export_cmd(path: str, output: str | None, commit_spec: str | None, as_json: bool, quiet: bool) -> None:
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
        commit = repo.head if commit_spec is None else resolve_commit(repo, commit_spec)
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


# -- records -------------------------------------------------------------------------


@click.command("put", short_help="Create or replace a record from JSON.")
@click.argument("path")
@click.argument("collection")
@click.argument("rkey")
@click.argument("file", metavar="FILE|-")
@signing_key_options
@json_option
def put_cmd(path: str, collection: str, rkey: str, file: str, signer: Signer, as_json: bool) -> None:
    """Create or replace a record from atproto JSON (a file, or - for stdin), in one signed commit.

    Links are {"$link": "bafy..."}, bytes {"$bytes": "<base64>"}; floats are refused.

    \b
    Example:
      echo '{"$type": "app.bsky.feed.post", "text": "hi", "createdAt": "2024-01-01T00:00:00Z"}' \\
        | pypds put ./alice app.bsky.feed.post 3jui7kd54zh2y -
    """
    record = from_json(read_json_input(file))
    with open_repo(path, signer=signer) as repo:
        cid = repo.put(collection, rkey, record)
        info = {"path": f"{collection}/{rkey}", "cid": cid.encode(), "commit": repo.head.encode(), "rev": repo.rev}
    _print_info(info, as_json)


@click.command("rm", short_help="Delete a record.")
@click.argument("path")
@click.argument("collection")
@click.argument("rkey")
@signing_key_options
@json_option
def rm_cmd(path: str, collection: str, rkey: str, signer: Signer, as_json: bool) -> None:
    """Delete a record in one signed commit.

    \b
    Example:
      pypds rm ./alice app.bsky.feed.post 3jui7kd54zh2y
    """
    with open_repo(path, signer=signer) as repo:
        repo.delete(collection, rkey)
        info = {"path": f"{collection}/{rkey}", "commit": repo.head.encode(), "rev": repo.rev}
    _print_info(info, as_json)


# -- refs and HEAD ---------------------------------------------------------------------


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
    _print_info(info, as_json)


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
    _print_info(info, as_json)


# -- blobs ----------------------------------------------------------------------------


@click.group("blob", short_help="Store, fetch and list blobs.")
def blob_group() -> None:
    """Blobs: files (images, video) stored beside the repository, named by CID.

    \b
    Example:
      pypds blob put ./alice cat.png
    """


@blob_group.command("put", short_help="Store a blob.")
@click.argument("path")
@click.argument("file", metavar="FILE|-")
@click.option("--mime", metavar="TYPE", help="MIME type (default: guessed from FILE's name).")
@json_option
def blob_put_cmd(path: str, file: str, mime: str | None, as_json: bool) -> None:
    """Store a blob and print its reference, ready to embed in a record.

    \b
    Example:
      pypds blob put ./alice cat.png --mime image/png
    """
    if mime is None:
        mime = mimetypes.guess_type(file)[0] if file != "-" else None
        if mime is None:
            raise click.UsageError(f"cannot guess the MIME type of {file}: pass --mime TYPE")
    data = read_capped(file, MAX_BLOB_INPUT_BYTES, "max_blob_input_bytes")
    with open_repo(path) as repo:
        ref = repo.put_blob(data, mime)
    if as_json:
        emit_json(ref.to_json())
    else:
        print_rows([("cid", ref.cid.encode()), ("mimeType", ref.mime_type), ("size", str(ref.size))])


@blob_group.command("get", short_help="Write a blob's bytes out.")
@click.argument("path")
@click.argument("cid", type=CID_TYPE)
@click.option("-o", "--output", metavar="FILE", help="Output file (default or -: stdout).")
def blob_get_cmd(path: str, cid: CID, output: str | None) -> None:
    """Write a blob's bytes (checked against its CID) to a file or stdout.

    \b
    Example:
      pypds blob get ./alice bafkreihl6t3dlil5cdlowrv2nafxafbedgvdeihsfaabua3ngencf3u5fi -o cat.png
    """
    with open_repo(path) as repo:
        data = repo.blob(cid)
    if data is None:
        raise NotFound(f"no blob {cid.encode()} in {path}")
    with binary_output(output, "a blob") as stream:
        stream.write(data)


@blob_group.command("ls", short_help="List blobs.")
@click.argument("path")
@json_option
def blob_ls_cmd(path: str, as_json: bool) -> None:
    """List stored blobs with their sizes.

    \b
    Example:
      pypds blob ls ./alice
    """
    with open_repo(path) as repo:
        cids = repo.list_blobs(stored=True)
        folder = repo.path / "blobs"
    sizes: list[tuple[str, int | None]] = []
    for cid in cids:
        name = cid.encode()
        try:
            sizes.append((name, (folder / name[:2] / name).stat().st_size))
        except OSError:
            sizes.append((name, None))
    if as_json:
        emit_json([{"cid": name, "size": size} for name, size in sizes])
    else:
        print_rows([(name, "?" if size is None else str(size)) for name, size in sizes])


WRITE_COMMANDS = [init_cmd, import_cmd, export_cmd, put_cmd, rm_cmd, ref_group, head_cmd, blob_group]
