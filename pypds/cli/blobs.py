"""Commands on blobs: blob put/get/ls."""

from __future__ import annotations

import click

from ..codec.cid import (
    CID,
)
from ..errors import (
    NotFound,
)
from .common import (
    CID_TYPE,
    MAX_BLOB_INPUT_BYTES,
    binary_output,
    emit_json,
    json_option,
    open_repo,
    print_rows,
    read_capped,
)


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
        import mimetypes  # only here: it is a cost of every start otherwise

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


BLOB_COMMANDS = [blob_group]
