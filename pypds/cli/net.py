"""Network commands: ``serve`` (the sync API over HTTP), ``resolve`` and ``download`` (by handle or DID), ``push``.

The network modules (aiohttp, dnspython) are imported when one of these
commands runs, not when the command line starts.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import click

from ..errors import IntegrityError, NetworkError, counted
from .common import (
    InputError,
    Progress,
    Signer,
    echo,
    emit_json,
    human_size,
    json_option,
    print_rows,
    quiet_option,
    signing_key_options,
)

if TYPE_CHECKING:
    from ..net.downloader import BlobFailure, DownloadReport
    from ..net.identity import Identity, ResolverConfig
    from ..net.pusher import PushReport

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_PLC_URL = "https://plc.directory"  # pypds.net.identity.DEFAULT_PLC_URL, without importing it


def _http_url(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter(f"not an http(s) URL: {value!r}", param_hint=f"'{option}'")
    return value


# -- serve -----------------------------------------------------------------------------------


def _handle_pair(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """``HANDLE=PATH`` (or ``HANDLE=DID``) options as a dict."""
    pairs: dict[str, str] = {}
    for value in values:
        handle, sep, target = value.partition("=")
        if not sep or not handle or not target:
            raise click.BadParameter(f"expected HANDLE=PATH, got {value!r}", param_hint="'--handle'")
        pairs[handle] = target
    return pairs


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
    "--identity",
    is_flag=True,
    help="Also act as the identity side: DID documents at /<did> (PLC-directory style) and "
    "/.well-known/did.json, built from each repository's DID and key and this server's URL.",
)
@click.option(
    "--handle",
    "handles",
    multiple=True,
    metavar="HANDLE=PATH",
    callback=_handle_pair,
    help="Answer /.well-known/atproto-did for HANDLE (the Host header) with the DID of the served "
    "repository PATH (or a DID), and list the handle in its document; repeatable; implies --identity.",
)
@click.option(
    "--public-url",
    metavar="URL",
    help="This server's URL as clients reach it, the PDS endpoint of the DID documents "
    "(default: http://HOST:PORT it listens on).",
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
@click.option(
    "--event-log",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="The subscribeRepos event log, an SQLite file kept 0600 (default: events.db in the first "
    "repository's directory). Keep the same file across restarts so cursors replay.",
)
@click.option(
    "--backlog",
    type=click.IntRange(1),
    default=10_000,
    show_default=True,
    metavar="N",
    help="Events the log keeps for replay (an older cursor gets an OutdatedCursor notice and the backlog).",
)
def serve_cmd(
    paths: tuple[str, ...],
    host: str,
    port: int,
    identity: bool,
    handles: dict[str, str],
    public_url: str | None,
    header_timeout: float,
    idle_timeout: float,
    event_log: str | None,
    backlog: int,
) -> None:
    """Serve repositories read-only over XRPC (com.atproto.sync.*) until Ctrl-C.

    Answers getRepo (with since), getBlocks, getRecord, getLatestCommit,
    getRepoStatus, listRepos, listBlobs and getBlob for each repository,
    keyed by its DID. CARs and blobs are streamed from the store. The
    address is printed on stderr once the server listens. SIGINT or SIGTERM
    stops it within 2 seconds.

    With --identity the server is also the PLC directory and handle host
    of the repositories it serves, so `pypds download` works on one
    machine: point its --plc-url and --web-base at this server. Each
    repository must hold its signing key (the document names it).

    The event stream com.atproto.sync.subscribeRepos (WebSocket) sends a
    #commit for every new commit, whoever writes it (HEADs are polled), a
    #sync when HEAD moves another way (an import, head --set), and
    #identity and #account for a repository seen for the first time. Every
    event gets the next seq and is stored in the event log before it is
    sent; ?cursor=N replays the events after N (the last --backlog are
    kept), with no cursor the stream is live only. A subscriber that
    falls too far behind gets ConsumerTooSlow and is disconnected.

    \b
    Examples:
      pypds serve ./alice ./bob --port 2583
      curl 'http://127.0.0.1:2583/xrpc/com.atproto.sync.listRepos'
      pypds serve ./alice --identity --handle alice.test=./alice --port 2583
      pypds download alice.test -o ./alice-copy --plc-url http://127.0.0.1:2583 \\
          --web-base http://127.0.0.1:2583 --allow-private-network
      pypds serve ./alice --event-log ./alice-events.db --backlog 1000 --port 2584
    """
    for path in paths:
        if not Path(path).is_dir():
            raise InputError(f"{path} is not a repository directory")
        if not (Path(path) / "pds.db").exists():
            raise InputError(f"no repository at {path}")
    from ..net.identity_server import IdentityOptions
    from ..net.server import serve
    from ..net.subscribe_repos import EventStreamOptions

    options = None
    if identity or handles or public_url is not None:
        options = IdentityOptions(handles, _http_url(public_url, "--public-url"))

    def ready(url: str, dids: list[str]) -> None:
        count = f"{len(dids)} repositor{'y' if len(dids) == 1 else 'ies'}"
        click.echo(f"serving {count} at {url} ({', '.join(dids)}); Ctrl-C to stop", err=True)
        if options is not None:
            _print_identity_hint(url, handles, dids)

    serve(
        list(paths),
        host,
        port,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        identity=options,
        event_stream=EventStreamOptions(event_log=event_log, backlog=backlog),
        on_ready=ready,
    )


def _print_identity_hint(url: str, handles: dict[str, str], dids: list[str]) -> None:
    """Tell how to download from this server: the options that point every lookup at it."""
    named = f", handles {', '.join(sorted(handles))}" if handles else ""
    click.echo(f"identity: DID documents at {url}/<did>{named}; download with", err=True)
    example = min(handles) if handles else dids[0]
    click.echo(f"  pypds download {example} -o COPY --plc-url {url} --web-base {url} --allow-private-network", err=True)


# -- resolve -----------------------------------------------------------------------------------


def resolver_options(func: F) -> F:
    """The options saying where identities are looked up; the command receives ``config: ResolverConfig``."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        plc_url: str,
        nameservers: tuple[str, ...],
        web_base: str | None,
        timeout: float,
        allow_private_network: bool,
        **kwargs: Any,
    ) -> Any:
        from ..net.identity import ResolverConfig

        config = ResolverConfig(
            plc_url=_http_url(plc_url, "--plc-url") or DEFAULT_PLC_URL,
            nameservers=nameservers,
            web_base=_http_url(web_base, "--web-base"),
            timeout=timeout,
            allow_private_network=allow_private_network,
        )
        return func(*args, config=config, **kwargs)

    options = [
        click.option(
            "--allow-private-network",
            is_flag=True,
            help="Allow a PDS, did:web or handle host, or redirect at a loopback or private address "
            "(--plc-url and --web-base are always allowed).",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=10.0,
            show_default=True,
            help="Seconds for each connection, read or DNS query.",
        ),
        click.option(
            "--web-base",
            metavar="URL",
            help="Base URL for handle (/.well-known/atproto-did) and did:web (/.well-known/did.json) lookups "
            "instead of https://HOST: {host} in it is replaced by the host; without {host}, every host is "
            "reached at URL with the host in the Host header.",
        ),
        click.option(
            "--dns",
            "nameservers",
            multiple=True,
            metavar="HOST[:PORT]",
            envvar="PYPDS_DNS",
            show_envvar=True,
            help="DNS server for the _atproto.<handle> TXT lookup; repeatable (default: the system resolver).",
        ),
        click.option(
            "--plc-url",
            metavar="URL",
            envvar="PYPDS_PLC_URL",
            show_envvar=True,
            default=DEFAULT_PLC_URL,
            show_default=True,
            help="PLC directory for did:plc documents.",
        ),
    ]
    for option in options:
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


@click.command("resolve", short_help="Resolve a handle or DID: DID document, PDS, signing key.")
@click.argument("identifier", metavar="HANDLE|DID")
@resolver_options
@json_option
def resolve_cmd(identifier: str, config: ResolverConfig, as_json: bool) -> None:
    """Resolve a handle or a DID: its DID, verified handle, PDS, signing key and DID document.

    A handle is looked up by DNS (_atproto.<handle> TXT) and HTTPS
    (/.well-known/atproto-did) at once, and its DID document must claim it.
    From a DID, the handle the document claims is reported as verified only
    if it resolves back to the DID. --json prints the whole DID document too.

    \b
    Examples (the second on one machine, from `pypds serve ./alice --identity
    --handle alice.test=./alice --port 2583`):
      pypds resolve alice.bsky.social
      pypds resolve alice.test --plc-url http://127.0.0.1:2583 --web-base http://127.0.0.1:2583 \\
          --allow-private-network --json
    """
    from ..net.identity import claimed_handles, resolve

    identity = resolve(identifier, config=config)
    claimed = claimed_handles(identity.document)
    info = {**identity.to_json(), "handleVerified": identity.handle is not None, "claimedHandles": claimed}
    if as_json:
        emit_json({**info, "document": identity.document})
    else:
        _print_identity(identity, claimed)


def _print_identity(identity: Identity, claimed: list[str]) -> None:
    if identity.handle is not None:
        handle = f"{identity.handle} (verified: it resolves to this DID and the document claims it)"
    elif claimed:
        handle = f"{claimed[0]} claimed, NOT verified: it does not resolve back to this DID"
    else:
        handle = "none claimed"
    print_rows([("did", identity.did), ("handle", handle), ("pds", identity.pds), ("signing key", identity.did_key)])


# -- download ----------------------------------------------------------------------------------

MAX_CAR_SIZE = 16 << 30  # pypds.net.downloader.MAX_CAR_BYTES, without importing it
MIN_RATE = 4096  # pypds.net.xrpc.MIN_RATE, without importing it
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class SizeType(click.ParamType):
    """A byte count: ``1048576``, ``512K``, ``100M``, ``16G`` (binary units; a trailing ``B``/``iB`` is allowed)."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("IB").removesuffix("B")
        found = re.fullmatch(r"([0-9]{1,15})([KMGT]?)", text, re.ASCII)
        if found is None or int(found[1]) < 1:
            self.fail(f"not a size such as 1048576, 512M or 16G: {value!r}", param, ctx)
        return int(found[1]) * _SIZE_UNITS[found[2]]


@click.command("download", short_help="Download a repository (and its blobs) by handle or DID.")
@click.argument("identifier", metavar="HANDLE|DID")
@click.option("-o", "--output", "path", required=True, metavar="PATH", help="Repository directory to create or update.")
@click.option("--blobs", is_flag=True, help="Also fetch every blob not stored yet (a rerun resumes).")
@click.option("--since", is_flag=True, help="Update an existing copy with only what changed since its rev.")
@resolver_options
@click.option(
    "--retries", type=click.IntRange(min=0), default=3, show_default=True, help="Retries of a failed request."
)
@click.option(
    "--min-rate",
    type=click.FloatRange(min=0),
    default=MIN_RATE,
    show_default=True,
    metavar="BYTES/S",
    help="Slowest average rate (over 30 s) a CAR, blob or answer may arrive at; 0: no minimum.",
)
@click.option(
    "--deadline",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Give up if the download's network transfers are not done after this long (default: no deadline).",
)
@click.option(
    "--max-car-size",
    type=SizeType(),
    default="16G",
    show_default=True,
    help="Largest repository CAR accepted (it is spooled to a temporary file beside PATH).",
)
@json_option
@quiet_option
def download_cmd(
    identifier: str,
    path: str,
    blobs: bool,
    since: bool,
    config: ResolverConfig,
    retries: int,
    min_rate: float,
    deadline: float | None,
    max_car_size: int,
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
    its CID. A blob that fails is reported (exit status 1 or 3) and fetched
    by the next run. A copy is never moved back to an older commit (exit
    status 1): that is `pypds head --set` or `pypds import`, on purpose.

    \b
    Examples (the last one on one machine, from `pypds serve ./alice --identity
    --handle alice.test=./alice --port 2583`):
      pypds download alice.bsky.social -o ./alice --blobs
      pypds download did:plc:ewvi7nxzyoun6zhxrhs64oiz -o ./alice --since --blobs
      pypds download alice.test -o ./alice-copy --plc-url http://127.0.0.1:2583 \\
          --web-base http://127.0.0.1:2583 --allow-private-network
    """
    from ..net.downloader import DownloadOptions, download

    if Path(path).is_file():
        raise InputError(f"{path} is a file, not a repository directory")
    options = DownloadOptions(retries=retries, min_rate=min_rate, deadline=deadline, max_car_bytes=max_car_size)
    with _bars(Progress.create(quiet).enabled) as progress:
        report = download(identifier, path, blobs=blobs, since=since, config=config, progress=progress, options=options)
    if as_json:
        emit_json(report.to_json())
    else:
        _print_report(report, blobs)
    _fail_on_blob_errors(report)


def _print_report(report: DownloadReport, blobs: bool) -> None:
    identity = report.identity
    who = identity.did if identity.handle is None else f"{identity.did} ({identity.handle})"
    blocks = counted(report.blocks, "block")
    size = f", {blocks}, {human_size(report.car_bytes)}" if report.action != "unchanged" else ""
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
    _fail_on_blob_failures(report.blobs_failed, len(report.blobs_fetched))


def _fail_on_blob_failures(failed: list[BlobFailure], succeeded: int) -> None:
    if not failed:
        return
    first = failed[0]
    total = len(failed) + succeeded
    message = (
        f"{len(failed)} of {total} blobs failed (first: {first.cid.encode()}: {first.error}); "
        "run the command again to fetch the rest"
    )
    if any(isinstance(failure.error, IntegrityError) for failure in failed):
        raise IntegrityError(message)
    raise NetworkError(message)


@contextmanager
def _bars(enabled: bool, verb: str = "downloading") -> Iterator[Any]:
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
                tasks[stage] = bar.add_task(f"{verb} {stage}", total=total, detail="")
            detail = f"{done}/{total}" if stage == "blobs" else human_size(done)
            if stage == "repo" and total:
                detail += f" of {human_size(total)}"
            bar.update(tasks[stage], completed=done, total=total, detail=detail)

        yield update


# -- push ----------------------------------------------------------------------------------------


@click.command("push", short_help="Push a repository (and its blobs) to a PDS.")
@click.argument("path", metavar="PATH")
@click.option("--pds", "pds_url", required=True, metavar="URL", help="The PDS to push to (http(s) base URL).")
@click.option(
    "--password",
    metavar="PASSWORD",
    envvar="PYPDS_PASSWORD",
    show_envvar=True,
    help="App password of the existing account (logs in with createSession).",
)
@click.option(
    "--identifier", metavar="HANDLE|DID|EMAIL", help="Account to log in as with --password (default: the repo's DID)."
)
@click.option(
    "--create-account",
    is_flag=True,
    help="Create the account for the repository's DID (createAccount with a service-auth JWT signed by the "
    "repository's key; the DID document must already name that key).",
)
@click.option("--handle", metavar="HANDLE", help="Handle of the new account (with --create-account).")
@click.option("--email", metavar="EMAIL", help="Email of the new account (with --create-account; the PDS needs one).")
@click.option(
    "--account-password",
    metavar="PASSWORD",
    envvar="PYPDS_ACCOUNT_PASSWORD",
    show_envvar=True,
    help="Login password of the new account (with --create-account).",
)
@click.option("--invite-code", metavar="CODE", help="Invite code, for a PDS that requires one.")
@click.option("--pds-did", metavar="DID", help="The PDS's DID for the JWT audience (default: its describeServer).")
@signing_key_options
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds for each connection or read.",
)
@click.option(
    "--retries", type=click.IntRange(min=0), default=3, show_default=True, help="Retries of a failed request."
)
@json_option
@quiet_option
def push_cmd(
    path: str,
    pds_url: str,
    password: str | None,
    identifier: str | None,
    create_account: bool,
    handle: str | None,
    email: str | None,
    account_password: str | None,
    invite_code: str | None,
    pds_did: str | None,
    signer: Signer,
    timeout: float,
    retries: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Push the repository at PATH to a PDS: log in (or create the account), import the CAR, upload
    every blob the PDS lists as missing, and check that the PDS's head is the repository's HEAD.

    An existing account logs in with an app password (--password or PYPDS_PASSWORD). A new
    account for the repository's DID (--create-account --handle --email) is authorised by a
    service-auth JWT signed with the repository's signing key, which the DID document must name;
    the PDS creates it deactivated, as in any account migration. Nothing local is changed; a
    refused login or import, or an account of another DID, is one line on stderr (exit status 3,
    1 for a DID mismatch). Blobs that fail are listed, and a rerun sends only what is missing.

    \b
    Examples (APP_PASSWORD: your app password; or set PYPDS_PASSWORD):
      pypds push ./alice --pds https://pds.example.com --password "$APP_PASSWORD"
      pypds push ./alice --pds http://127.0.0.1:2583 --create-account \\
          --handle alice.test --email alice@example.com
    """
    from ..net.pusher import NewAccount, push

    _check_push_options(password, create_account, handle, email, identifier)
    if not (Path(path) / "pds.db").is_file():
        raise InputError(f"no repository at {path}")
    account = NewAccount(handle or "", email or "", account_password, invite_code) if create_account else None
    with _bars(Progress.create(quiet).enabled, "uploading") as progress:
        report = push(
            path,
            _http_url(pds_url, "--pds") or pds_url,
            password=password,
            identifier=identifier,
            new_account=account,
            signing_key=signer.key,
            pds_did=pds_did,
            timeout=timeout,
            retries=retries,
            progress=progress,
        )
    if as_json:
        emit_json(report.to_json())
    else:
        _print_push_report(report)
    if report.pds_head != report.head:
        shown_head = "nothing" if report.pds_head is None else report.pds_head.encode()
        raise IntegrityError(f"after the import {report.pds} has head {shown_head}, not {report.head.encode()}")
    _fail_on_blob_failures(report.blobs_failed, len(report.blobs_uploaded))


def _check_push_options(
    password: str | None, create_account: bool, handle: str | None, email: str | None, identifier: str | None
) -> None:
    if create_account == (password is not None):
        raise click.UsageError("give either --password (an existing account) or --create-account (a new one)")
    if create_account and (not handle or not email):
        raise click.UsageError("--create-account needs --handle and --email")
    if not create_account and (handle or email):
        raise click.UsageError("--handle and --email go with --create-account")
    if create_account and identifier:
        raise click.UsageError("--identifier goes with --password (a new account is the repository's DID)")


def _print_push_report(report: PushReport) -> None:
    who = report.did if report.handle is None else f"{report.did} ({report.handle})"
    echo(f"pushed {report.path} to {report.pds}: {who}, account {report.account}")
    echo(f"sent CAR {human_size(report.car_bytes)}: commit {report.head.encode()}  rev {report.rev}")
    echo(
        f"blobs: {len(report.blobs_uploaded)} of {report.blobs_missing} missing uploaded "
        f"({human_size(report.blob_bytes)}), {len(report.blobs_failed)} failed"
    )
    if report.pds_head is not None:
        same = "the same" if report.pds_head == report.head else "DIFFERENT"
        echo(f"pds head {report.pds_head.encode()} ({same})")


#: The commands this module defines (see pypds.cli.app.COMMAND_MODULES).
COMMANDS = [serve_cmd, resolve_cmd, download_cmd, push_cmd]
