"""The ``pypds`` command group and :func:`main`, which maps every failure to one line and an exit status."""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Sequence

import click

from ..errors import IntegrityError, NetworkError, PypdsError
from ..version import __version__

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_NETWORK = 0, 1, 2, 3
EXIT_INTERRUPTED = 130

_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", None)  # click >= 8.2

#: Each command and the module (``pypds/cli/<noun>.py``) that defines it in its ``COMMANDS``; a
#: module is imported only when one of its commands runs (``pypds --version`` imports none).
COMMAND_MODULES = {
    **dict.fromkeys(["init", "inspect", "verify", "mst", "diff", "gc"], "repository"),
    **dict.fromkeys(["ls", "get", "collections", "dump", "unpack", "put", "rm", "load"], "records"),
    **dict.fromkeys(["import", "export", "compact"], "car"),
    **dict.fromkeys(["head", "revert", "ref"], "refs"),
    **dict.fromkeys(["blob"], "blobs"),
    **dict.fromkeys(["serve", "resolve", "download", "push"], "net"),
    **dict.fromkeys(["follow", "mirror", "archive-status"], "mirror"),
}


class _LazyGroup(click.Group):
    """A group whose commands are imported from their module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is None:
            return None
        commands = importlib.import_module(f"{__package__}.{module}").COMMANDS
        return next(command for command in commands if command.name == cmd_name)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    no_args_is_help=True,
)
@click.version_option(__version__, "-V", "--version", prog_name="pypds", message="%(prog)s %(version)s")
def cli() -> None:
    """Inspect, back up, verify and migrate atproto (Bluesky) repositories.

    SRC is a repository directory or a CAR file (- for stdin): read-only
    commands take either. PATH is a repository directory.

    Exit status: 0 success, 1 a check failed (corrupt data, bad signature,
    failed verification), 2 usage or input error, 3 network failure (a
    server not reached, too slow, refusing or answering badly).

    \b
    Example session:
      pypds init ./alice --did did:plc:ewvi7nxzyoun6zhxrhs64oiz
      pypds put ./alice app.bsky.feed.post 3jui7kd54zh2y post.json
      pypds export ./alice -o alice.car
      pypds verify alice.car
    """


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _fail(message: str, status: int) -> int:
    click.echo(f"pypds: {_one_line(message)}", err=True)
    return status


def _usage_message(exc: click.UsageError) -> str:
    message = exc.format_message()
    ctx = exc.ctx
    if ctx is None:
        return message
    where = ctx.command_path.removeprefix("pypds").strip()
    hint = f"(see '{ctx.command_path} --help')"
    return f"{where}: {message} {hint}" if where else f"{message} {hint}"


def _os_message(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _show_warning(message: Warning | str, *_args: object, **_kwargs: object) -> None:
    click.echo(f"pypds: warning: {_one_line(str(message))}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Errors never raise: each becomes one line ``pypds: <message>`` on stderr
    and the status 1 (an integrity check failed), 2 (usage or input error) or
    3 (a network failure: :class:`~pypds.errors.NetworkError`).
    Warnings are one line ``pypds: warning: <message>``. Set ``PYPDS_DEBUG=1``
    to get the traceback of an unexpected error.
    """
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(list(sys.argv[1:] if argv is None else argv))


def _run(args: list[str]) -> int:
    try:
        result = cli.main(args=args, prog_name="pypds", standalone_mode=False)
    except click.UsageError as exc:
        if _NO_ARGS is not None and isinstance(exc, _NO_ARGS):
            click.echo(exc.ctx.get_help())
            return EXIT_OK
        return _fail(_usage_message(exc), EXIT_USAGE)
    except click.ClickException as exc:
        return _fail(exc.format_message(), EXIT_USAGE)
    except click.Abort:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except IntegrityError as exc:
        return _fail(str(exc), EXIT_CHECK_FAILED)
    except NetworkError as exc:
        return _fail(str(exc), EXIT_NETWORK)
    except PypdsError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        return _fail(_os_message(exc), EXIT_USAGE)
    except SystemExit as exc:  # click exits this way on a closed stdout pipe
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except Exception as exc:
        if os.environ.get("PYPDS_DEBUG"):
            raise
        return _fail(f"internal error: {type(exc).__name__}: {exc} (set PYPDS_DEBUG=1 for a traceback)", EXIT_USAGE)
    return result if isinstance(result, int) else EXIT_OK
