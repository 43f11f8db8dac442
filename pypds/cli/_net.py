"""Network commands: ``serve`` (the sync API over HTTP) and ``download`` (by handle or DID).

The network modules (aiohttp, dnspython) are imported when one of these
commands runs, not when the command line starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from ..errors import IntegrityError, NetworkError
from ._common import InputError, Progress, echo, emit_json, human_size, json_option, quiet_option

if TYPE_CHECKING:
    from ..downloader import DownloadReport

DEFAULT_PLC_URL = "https://plc.directory"  # pypds.identity.DEFAULT_PLC_URL, without importing it


def _http_url(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter(f"not an http(s) URL: {value!r}", param_hint=f"'{option}'")
    return value


# -- serve -----------------------------------------------------------------------------------


@click.command("serve", short_help="Serve repositories over the atproto sync API.")
@click.argument("paths", nargs=-1, required=True, metavar="PATH [PATH ...]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=2583,
    show_default=True,
    help="Port to listen on (0: any free port, printed at start).",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Cut a connection whose request headers are not complete this long after their first byte.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(0, min_open=True),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Cut a connection with no request in progress that sends nothing, or does not read, this long.",
)
def serve_cmd(paths: tuple[str, ...], host: str, port: int, header_timeout: float, idle_timeout: float) -> None:
    """Serve repositories read-only over XRPC (com.atproto.sync.*) until Ctrl-C.

    Answers getRepo (with since), getBlocks, getRecord, getLatestCommit,
    getRepoStatus, listRepos, listBlobs and getBlob for each repository,
    keyed by its DID. CARs and blobs are streamed from the store. The
    address is printed on stderr once the server listens. SIGINT or SIGTERM
    stops it within 2 seconds.

    \b
    Example:
      pypds serve ./alice ./bob --port 2583
      curl 'http://127.0.0.1:2583/xrpc/com.atproto.sync.listRepos'
    """
    for path in paths:
        if not Path(path).is_dir():
            raise InputError(f"{path} is not a repository directory")
        if not (Path(path) / "pds.db").exists():
            raise InputError(f"no repository at {path}")
    from ..server import serve

    def ready(url: str, dids: list[str]) -> None:
        count = f"{len(dids)} repositor{'y' if len(dids) == 1 else 'ies'}"
        click.echo(f"serving {count} at {url} ({', '.join(dids)}); Ctrl-C to stop", err=True)

    serve(list(paths), host, port, header_timeout=header_timeout, idle_timeout=idle_timeout, on_ready=ready)


# -- download ----------------------------------------------------------------------------------


@click.command("download", short_help="Download a repository (and its blobs) by handle or DID.")
@click.argument("identifier", metavar="HANDLE|DID")
@click.option("-o", "--output", "path", required=True, metavar="PATH", help="Repository directory to create or update.")
@click.option("--blobs", is_flag=True, help="Also fetch every blob not stored yet (a rerun resumes).")
@click.option("--since", is_flag=True, help="Update an existing copy with only what changed since its rev.")
@click.option(
    "--plc-url",
    metavar="URL",
    envvar="PYPDS_PLC_URL",
    show_envvar=True,
    default=DEFAULT_PLC_URL,
    show_default=True,
    help="PLC directory for did:plc documents.",
)
@click.option(
    "--dns",
    "nameservers",
    multiple=True,
    metavar="HOST[:PORT]",
    help="DNS server for the _atproto.<handle> TXT lookup; repeatable (default: the system resolver).",
)
@click.option(
    "--web-base",
    metavar="URL",
    help="Base URL for handle (/.well-known/atproto-did) and did:web (/.well-known/did.json) lookups "
    "instead of https://HOST: {host} in it is replaced by the host; without {host}, every host is "
    "reached at URL with the host in the Host header.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds for each connection, read or DNS query.",
)
@click.option(
    "--retries", type=click.IntRange(min=0), default=3, show_default=True, help="Retries of a failed request."
)
@json_option
@quiet_option
def download_cmd(
    identifier: str,
    path: str,
    blobs: bool,
    since: bool,
    plc_url: str,
    nameservers: tuple[str, ...],
    web_base: str | None,
    timeout: float,
    retries: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Download the repository of a handle or DID from its PDS, verified, into PATH.

    Resolves the identity (DNS TXT _atproto.<handle> and
    https://<handle>/.well-known/atproto-did; did:plc through the PLC
    directory, did:web through /.well-known/did.json), downloads
    com.atproto.sync.getRepo, and imports it after checking every block,
    the whole tree and the commit signature against the DID document's key.
    A tampered or corrupt download changes nothing (exit status 1).

    With --since an existing copy is brought up to date with a diff CAR;
    with --blobs every blob not yet stored is fetched and checked against
    its CID. A blob that fails is reported (exit status 1 or 2) and fetched
    by the next run.

    \b
    Examples:
      pypds download alice.bsky.social -o ./alice --blobs
      pypds download did:plc:ewvi7nxzyoun6zhxrhs64oiz -o ./alice --since --blobs
      pypds download alice.test -o ./alice --plc-url http://127.0.0.1:2582 \\
          --dns 127.0.0.1:5353 --web-base http://127.0.0.1:8080
    """
    from ..downloader import download
    from ..identity import ResolverConfig

    config = ResolverConfig(
        plc_url=_http_url(plc_url, "--plc-url") or DEFAULT_PLC_URL,
        nameservers=nameservers,
        web_base=_http_url(web_base, "--web-base"),
        timeout=timeout,
    )
    if Path(path).is_file():
        raise InputError(f"{path} is a file, not a repository directory")
    with _bars(Progress.create(quiet).enabled) as progress:
        report = download(identifier, path, blobs=blobs, since=since, config=config, progress=progress, retries=retries)
    if as_json:
        emit_json(report.to_json())
    else:
        _print_report(report, blobs)
    _fail_on_blob_errors(report)


def _print_report(report: DownloadReport, blobs: bool) -> None:
    identity = report.identity
    who = identity.did if identity.handle is None else f"{identity.did} ({identity.handle})"
    size = f", {report.blocks} blocks, {human_size(report.car_bytes)}" if report.action != "unchanged" else ""
    echo(f"{report.action} {report.path}: {who} from {identity.pds}{size}")
    if report.action == "unchanged":  # nothing was downloaded, so nothing was verified in this run
        echo(f"head {report.head.encode()}  rev {report.rev}  already the PDS's latest commit")
    else:
        echo(f"head {report.head.encode()}  rev {report.rev}  signature valid ({identity.did_key})")
    if blobs:
        echo(
            f"blobs: {len(report.blobs_fetched)} fetched, {report.blobs_present} already present, "
            f"{len(report.blobs_failed)} failed"
        )


def _fail_on_blob_errors(report: DownloadReport) -> None:
    failed = report.blobs_failed
    if not failed:
        return
    first = failed[0]
    total = len(failed) + len(report.blobs_fetched)
    message = (
        f"{len(failed)} of {total} blobs failed (first: {first.cid.encode()}: {first.error}); "
        "run the command again to fetch the rest"
    )
    if any(isinstance(failure.error, IntegrityError) for failure in failed):
        raise IntegrityError(message)
    raise NetworkError(message)


@contextmanager
def _bars(enabled: bool) -> Iterator[Any]:
    """A ``progress(stage, done, total)`` callback drawing rich bars on stderr (None when disabled)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}")]
    with RichProgress(*columns, TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"downloading {stage}", total=total, detail="")
            detail = f"{done}/{total}" if stage == "blobs" else human_size(done)
            if stage == "repo" and total:
                detail += f" of {human_size(total)}"
            bar.update(tasks[stage], completed=done, total=total, detail=detail)

        yield update


NET_COMMANDS = [serve_cmd, download_cmd]
