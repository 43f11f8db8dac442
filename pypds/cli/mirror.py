"""Mirror commands: ``follow`` (a subscribeRepos stream into an archive), ``mirror`` (backfill a host,
then follow it) and ``archive-status``.

The network modules are imported when one of these commands runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .common import InputError, Progress, echo, emit_json, human_size, json_option, print_rows, quiet_option
from .net import resolver_options

if TYPE_CHECKING:
    from ..net.identity import ResolverConfig
    from ..net.mirror import Mirror, MirrorStats


def _partition(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int]:
    if value is None:
        return (0, 1)
    from ..net.mirror import parse_partition

    try:
        return parse_partition(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--partition'") from None


def _follow_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--idle-timeout",
            type=click.FloatRange(min=0, min_open=True),
            metavar="SECONDS",
            help="Stop after this long without an event (default: follow until interrupted).",
        ),
        click.option(
            "--max-events", type=click.IntRange(min=1), metavar="N", help="Stop after N events (default: no limit)."
        ),
        click.option(
            "--resync-concurrency",
            type=click.IntRange(min=1),
            default=4,
            show_default=True,
            help="Accounts resynced (getRepo) at once.",
        ),
        click.option("--keep-deleted", is_flag=True, help="Keep the copy of an account the stream says is deleted."),
        click.option(
            "--partition",
            metavar="K/N",
            callback=_partition,
            help="Apply only the accounts whose sha256(DID) (first 8 bytes) mod N is K (N followers share a stream).",
        ),
    ]
    for option in options:
        func = option(func)
    return func


class _WarningLine(logging.Handler):
    """The mirror's log (warnings: rejected events, failed resyncs, lost connections) as ``pypds: warning:`` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"pypds: warning: {record.getMessage()}", err=True)


def _mirror(
    archive: str, config: ResolverConfig, partition: tuple[int, int], quiet: bool = False, **options: Any
) -> Mirror:
    from ..net.mirror import Mirror

    logger = logging.getLogger("pypds.net.mirror")
    logger.handlers[:] = [_WarningLine(logging.WARNING)] if not quiet else [logging.NullHandler()]
    logger.propagate = False

    if Path(archive).is_file():
        raise InputError(f"{archive} is a file, not an archive directory")
    return Mirror(archive, config=config, partition=partition, **options)


def _run(mirror: Mirror, work: Awaitable[Any], show: bool) -> Any:
    """Run ``work`` with SIGINT/SIGTERM stopping the mirror cleanly, and a status line on a terminal."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, mirror.stop)
        with _status(mirror, show):
            return await work

    return asyncio.run(main())


@contextlib.contextmanager
def _status(mirror: Mirror, show: bool) -> Iterator[None]:
    """A live line on stderr: events, applied, rejected, resyncs, events/s (only on a terminal)."""
    if not show:
        yield
        return
    from rich.console import Console
    from rich.live import Live

    def line() -> str:
        s = mirror.stats
        return (
            f"events {s.events}  applied {s.applied}  duplicates {s.duplicates}  rejected {s.rejected}  "
            f"resyncs {s.resyncs}  {s.events_per_second:.0f} events/s  cursor {s.cursor}"
        )

    with Live(line(), console=Console(stderr=True), refresh_per_second=4, transient=True) as live:
        stop = False

        def refresh() -> None:
            while not stop:
                live.update(line())
                time.sleep(0.25)

        import threading

        thread = threading.Thread(target=refresh, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop = True


def _print_stats(stats: MirrorStats) -> None:
    print_rows(
        [
            ("events", str(stats.events)),
            ("applied", str(stats.applied)),
            ("duplicates", str(stats.duplicates)),
            ("rejected", str(stats.rejected)),
            ("resyncs", f"{stats.resyncs} ({stats.resync_failures} failed)"),
            ("deleted", str(stats.deleted)),
            ("cursor", str(stats.cursor)),
        ]
    )


@click.command("follow", short_help="Follow a PDS's or relay's event stream into an archive.")
@click.argument("url")
@click.argument("archive", metavar="ARCHIVE")
@click.option(
    "--cursor",
    type=click.IntRange(min=0),
    metavar="SEQ",
    help="Start after event SEQ (0: everything the stream still has) instead of the saved cursor; "
    "without a saved cursor, following starts at the stream's live end.",
)
@_follow_options
@resolver_options
@json_option
@quiet_option
def follow_cmd(
    url: str,
    archive: str,
    cursor: int | None,
    partition: tuple[int, int],
    keep_deleted: bool,
    resync_concurrency: int,
    max_events: int | None,
    idle_timeout: float | None,
    config: ResolverConfig,
    as_json: bool,
    quiet: bool,
) -> None:
    """Follow URL's com.atproto.sync.subscribeRepos into ARCHIVE (one copy per account).

    Every #commit is verified (signature from the DID document, ops against
    the blocks, the previous tree by inversion) and applied to the account's
    copy ARCHIVE/<shard>/<did>/ in one transaction. An account not held yet,
    a gap in its commits, a #sync or a commit that does not apply is
    resynced from its PDS (getRepo) in the background. A bad signature, a
    DID mismatch, an altered block, a malformed frame or a commit older than
    the copy is rejected and logged (see `pypds archive-status`); the copy
    is not changed. A deleted account's copy is removed (--keep-deleted
    keeps it). The cursor is saved in ARCHIVE: a restart, even after kill
    -9, continues where it stopped and applies nothing twice. SIGINT or
    SIGTERM stops it cleanly.

    \b
    Examples (the last against `pypds serve ./alice ./bob --identity --port 2583`):
      pypds follow wss://bsky.network ./archive
      pypds follow wss://bsky.network ./archive --partition 0/4
      pypds follow https://pds.example.com ./archive --keep-deleted --idle-timeout 60
      pypds follow http://127.0.0.1:2583 ./archive --cursor 0 --idle-timeout 1 \\
          --plc-url http://127.0.0.1:2583 --allow-private-network
    """
    mirror = _mirror(
        archive, config, partition, quiet, keep_deleted=keep_deleted, resync_concurrency=resync_concurrency
    )
    try:
        stats = _run(
            mirror,
            mirror.run_async(url, max_events=max_events, idle_timeout=idle_timeout, cursor=cursor),
            Progress.create(quiet).enabled,
        )
    finally:
        mirror.close()
    if as_json:
        emit_json(stats.to_json())
    elif not quiet:
        _print_stats(stats)


@click.command("mirror", short_help="Download every repository of a host, then follow its stream.")
@click.argument("archive", metavar="ARCHIVE")
@click.option("--from", "url", required=True, metavar="URL", help="The PDS or relay to mirror.")
@click.option("--blobs", is_flag=True, help="Also fetch every blob the repositories reference.")
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="Repositories downloaded at once."
)
@click.option("--no-follow", is_flag=True, help="Stop after the downloads (a later `pypds follow` continues).")
@_follow_options
@resolver_options
@json_option
@quiet_option
def mirror_cmd(
    archive: str,
    url: str,
    blobs: bool,
    concurrency: int,
    no_follow: bool,
    partition: tuple[int, int],
    keep_deleted: bool,
    resync_concurrency: int,
    max_events: int | None,
    idle_timeout: float | None,
    config: ResolverConfig,
    as_json: bool,
    quiet: bool,
) -> None:
    """Back up every repository of the host URL into ARCHIVE, then follow its event stream.

    The stream is opened first and the seq of its first event noted; every
    repository com.atproto.sync.listRepos names is downloaded (verified, as
    `pypds download` does; --blobs fetches blobs too); then it follows from
    the noted event, so nothing written during the downloads is missed. A
    rerun skips the repositories already at the listed rev (and retries
    those that failed: exit status 3). Progress (repositories done, bytes)
    is shown on a terminal; --json prints the report.

    \b
    Examples (the second against `pypds serve ./alice ./bob --identity --port 2583`):
      pypds mirror ./archive --from https://pds.example.com --blobs
      pypds mirror ./archive --from http://127.0.0.1:2583 --no-follow --blobs \\
          --plc-url http://127.0.0.1:2583 --allow-private-network
    """
    mirror = _mirror(
        archive, config, partition, quiet, keep_deleted=keep_deleted, resync_concurrency=resync_concurrency, blobs=blobs
    )
    show = Progress.create(quiet).enabled
    try:
        with _backfill_bar(show) as progress:
            work = mirror.backfill_async(
                url,
                follow=not no_follow,
                concurrency=concurrency,
                progress=progress,
                max_events=max_events,
                idle_timeout=idle_timeout,
            )
            report = _run(mirror, work, False)
    finally:
        mirror.close()
    if as_json:
        emit_json({**report.to_json(), "follow": None if no_follow else mirror.stats.to_json()})
    elif not quiet:
        echo(
            f"{report.listed} listed: {report.downloaded} downloaded ({human_size(report.car_bytes)}), "
            f"{report.current} already current, {report.inactive} inactive, {report.failed} failed "
            f"in {report.seconds:.1f} s; cursor {report.cursor}"
        )
        for did, error in report.errors[:20]:
            echo(f"  {did}: {error}")
        if not no_follow:
            _print_stats(mirror.stats)
    if report.failed:
        from ..errors import NetworkError

        raise NetworkError(f"{report.failed} of {report.listed} repositories were not downloaded; a rerun retries them")


@contextlib.contextmanager
def _backfill_bar(show: bool) -> Iterator[Callable[[int, int, int], None] | None]:
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    columns = [SpinnerColumn(), TextColumn("repositories"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn("{task.fields[detail]}"), TimeElapsedColumn()]
    with RichProgress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("backfill", total=None, detail="")

        def update(done: int, total: int, size: int) -> None:
            bar.update(task, completed=done, total=total, detail=human_size(size))

        yield update


@click.command("archive-status", short_help="Show a mirror archive: accounts, statuses, cursor, errors.")
@click.argument("archive", metavar="ARCHIVE")
@click.option("--accounts", "show_accounts", is_flag=True, help="List every account (DID, rev, status, errors).")
@json_option
def archive_status_cmd(archive: str, show_accounts: bool, as_json: bool) -> None:
    """Show what a mirror ARCHIVE holds: accounts by status, copies, commits applied, pending
    resyncs, each stream's cursor and the latest rejected events.

    \b
    Examples:
      pypds archive-status ./archive
      pypds archive-status ./archive --accounts --json
    """
    from ..net.archive import Archive

    with Archive.open(archive, create=False) as index:
        status = index.status()
        accounts = [row.to_json() for row in index.accounts()] if show_accounts or not as_json else []
    if as_json:
        emit_json({**status, "accounts": accounts} if show_accounts else status)
        return
    rows = [
        ("archive", status["archive"]),
        ("accounts", f"{status['accounts']} ({status['copies']} copies)"),
        ("by status", ", ".join(f"{k} {v}" for k, v in sorted(status["byStatus"].items())) or "none"),
        ("applied", f"{status['commitsApplied']} commits"),
        ("pending resyncs", str(len(status["pendingResyncs"]))),
        ("rejected", f"{status['rejections']} events"),
    ]
    rows += [(f"cursor {stream}", str(seq)) for stream, seq in sorted(status["cursors"].items())]
    print_rows(rows)
    for row in accounts if show_accounts or len(accounts) <= 20 else []:
        error = f"  errors {row['errors']}: {row['lastError']}" if row["errors"] else ""
        echo(f"{row['did']}  rev {row['rev']}  {row['status']}{error}")
    for rejection in status["recentRejections"]:
        echo(f"rejected seq {rejection['seq']} {rejection['did'] or ''} {rejection['kind']}: {rejection['reason']}")


COMMANDS = [follow_cmd, mirror_cmd, archive_status_cmd]
