"""Commands on blobs: blob put/get/ls/missing/export."""

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
    Progress,
    binary_output,
    echo,
    emit_json,
    json_option,
    open_repo,
    print_rows,
    quiet_option,
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
    """List stored blobs with their sizes and MIME types (unknown for blobs stored without one:
    downloaded, or put by an older pypds).

    \b
    Example:
      pypds blob ls ./alice
    """
    with open_repo(path) as repo:
        blobs = [(cid, repo.blob_type(cid)) for cid in repo.list_blobs(stored=True)]
        folder = repo.path / "blobs"
    rows: list[tuple[str, int | None, str | None]] = []
    for cid, mime in blobs:
        name = cid.encode()
        try:
            rows.append((name, (folder / name[:2] / name).stat().st_size, mime))
        except OSError:
            rows.append((name, None, mime))
    if as_json:
        emit_json([{"cid": name, "size": size, "mimeType": mime} for name, size, mime in rows])
    else:
        print_rows([(name, "?" if size is None else str(size), mime or "unknown") for name, size, mime in rows])


@blob_group.command("missing", short_help="List blobs records reference but that are not stored.")
@click.argument("path")
@json_option
def blob_missing_cmd(path: str, as_json: bool) -> None:
    """List the blobs records at HEAD reference that are not stored here (in key order of first use).

    `pypds download HANDLE -o PATH --since --blobs` fetches what the PDS still has.

    \b
    Example:
      pypds blob missing ./alice
    """
    with open_repo(path) as repo:
        missing = [cid.encode() for cid in repo.missing_blobs()]
    if as_json:
        emit_json(missing)
    else:
        for name in missing:
            echo(name)


@blob_group.command("export", short_help="Copy every blob into a directory, named by CID.")
@click.argument("path")
@click.argument("directory", metavar="DIR")
@json_option
@quiet_option
def blob_export_cmd(path: str, directory: str, as_json: bool, quiet: bool) -> None:
    """Copy every stored blob into DIR as <CID>, with the usual extension of its MIME type when it is
    known (<CID>.png, <CID>.jpg): the images and videos of the repository, as files.

    Every byte is checked against the CID before it is written; each file
    is written whole or not at all, and an existing one is replaced.

    \b
    Example:
      pypds blob export ./alice alice-blobs
    """
    with open_repo(path) as repo, Progress.create(quiet).stages("blobs") as report:
        written = repo.export_blobs(directory, progress=lambda done, total: report("exporting", done, total))
    if as_json:
        emit_json([{"cid": cid.encode(), "file": str(file)} for cid, file in written])
    else:
        echo(f"exported {len(written)} blob{'' if len(written) == 1 else 's'} to {directory}")


#: The commands this module defines (see pypds.cli.app.COMMAND_MODULES).
COMMANDS = [blob_group]
