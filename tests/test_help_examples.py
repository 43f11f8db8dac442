"""Every example in ``pypds COMMAND --help`` runs as written.

Each command's examples run in order, in a fresh copy of a workspace that
holds the files they name (``./alice`` and ``./bob``, ``alice.car``,
``post.json``, ``cat.png``, ...); a path an example creates with ``pypds
init`` is removed first. ``alice``'s key is the examples' key, so the
``did:key`` the examples name verifies its commits: a reader uses their own.
Commands run as in ``doc_runner.py`` (``pypds serve`` in the background,
documented ports mapped to free ones, nothing beyond 127.0.0.1). Examples
that need the internet (a download or push without a loopback URL) are
checked by parsing them with the command line's own parser; their loopback
twins run. The download and push examples get a loopback server at their
documented port: ``pypds serve --identity`` of ``./alice``, a stub PDS.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from pypds import CarReader, CarWriter, Repo, cid_for_raw, load_signing_key
from pypds.cli.app import cli
from pypds.net.archive import Archive

from .conftest import POST, post
from .doc_runner import Command, Shell
from .netstubs import DnsStub
from .test_push import StubPds

ALICE = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
BOB = "did:plc:w4xbfzo7kqfes5zb7r6qv3rw"
#: The examples' key (its did:key is in the help texts). Use your own.
EXAMPLE_KEY = load_signing_key(hashlib.sha256(b"pypds example key: use your own").hexdigest())
BOB_KEY_HEX = hashlib.sha256(b"pypds example key for bob: use your own").hexdigest()
#: A 1x1 PNG: cat.png (its CID is in the help of `blob get`).
CAT_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000a49444154789c63000100000500010d0a2db40000000049454e44ae426082"
)
INTERNET = re.compile(r"^pypds\s+(download|push|resolve|follow|mirror)\b(?!.*127\.0\.0\.1)", re.S)


def all_commands() -> Iterator[tuple[str, click.Command]]:
    """``("pypds blob get", command)`` for the group and every command under it."""
    stack: list[tuple[str, click.Command]] = [("pypds", cli)]
    while stack:
        name, command = stack.pop(0)
        yield name, command
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            stack += [(f"{name} {sub}", command.get_command(ctx, sub)) for sub in command.list_commands(ctx)]


def examples(name: str, command: click.Command) -> list[Command]:
    """The command lines under the ``Example(s)`` heading of a command's help (``\\`` continues a line)."""
    lines = (command.help or "").splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"\s*Examples?\b", line)), None)
    if start is None:
        return []
    indent = len(lines[start]) - len(lines[start].lstrip())
    found: list[Command] = []
    pending = ""
    for line in lines[start + 1 :]:
        if not line.strip() or len(line) - len(line.lstrip()) <= indent:
            continue
        pending += line.strip() if not pending else "\n    " + line.strip()
        if not pending.endswith("\\"):
            found.append(Command(pending, f"`{name} --help`"))
            pending = ""
    return found


COMMANDS = list(all_commands())
EXAMPLES = {name: examples(name, command) for name, command in COMMANDS}


def build_workspace(root: Path) -> None:
    """Every file the examples name."""
    with Repo.create(root / "alice", ALICE, signing_key=EXAMPLE_KEY, store_key=True) as repo:
        repo.put(POST, "3jui7kd54zh2y", post(1))
        repo.export_car(root / "before.car")
        repo.set_ref("before-cleanup", repo.head)
        ref = repo.put_blob(CAT_PNG, "image/png")
        image = {"$type": "app.bsky.embed.images", "images": [{"alt": "a cat", "image": ref.to_record()}]}
        repo.put(POST, "3jui7kd54zh3a", {**post(2), "embed": image})
        repo.export_car(root / "alice.car")
        repo.export_car(root / "after.car")
    with CarReader(root / "alice.car") as reader, (root / "messy.car").open("wb") as messy:
        writer = CarWriter(messy, reader.roots)
        for cid, data in reader:
            writer.write_block(cid, data)
        writer.write_block(cid_for_raw(b"a block no tree reaches"), b"a block no tree reaches")
    Repo.create(root / "bob", BOB).close()
    (root / "alice.key").write_text(EXAMPLE_KEY.to_bytes().hex() + "\n")
    (root / "bob.key").write_text(BOB_KEY_HEX + "\n")
    for key_file in ("alice.key", "bob.key"):
        (root / key_file).chmod(0o600)
    (root / "post.json").write_text(json.dumps(post(3)))
    (root / "cat.png").write_bytes(CAT_PNG)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("help-workspace")
    build_workspace(root)
    return root


@pytest.fixture(scope="module")
def dns():
    with DnsStub() as stub:
        yield stub


def parse_only(line: str) -> None:
    """Check a command line against the parser of the command it names, without running it."""
    args = shlex.split(line.replace("\\\n", " "))[1:]
    command: click.Command = cli
    while isinstance(command, click.Group):
        found = command.get_command(click.Context(command), args[0]) if args else None
        if found is None:
            raise click.UsageError(f"no such command in {line!r}")
        command, args = found, args[1:]
    command.make_context(command.name or "", args)


def start_companion(name: str, shell: Shell, stack: list) -> None:
    """The server a command's loopback examples talk to, at their documented port 2583."""
    if name in ("pypds download", "pypds resolve"):
        shell.start_server(Command("pypds serve ./alice --identity --handle alice.test=./alice --port 2583", name))
    elif name in ("pypds mirror", "pypds follow"):
        shell.start_server(Command("pypds serve ./alice ./bob --identity --port 2583", name))
    elif name == "pypds archive-status":
        Archive.open(shell.workdir / "archive").close()
    elif name == "pypds push":
        stub = StubPds(shell.workdir.parent / "stub-pds").__enter__()
        stack.append(stub)
        stub.keys[ALICE] = EXAMPLE_KEY.public_key
        shell.ports["2583"] = stub.url.rsplit(":", 1)[1]


@pytest.mark.parametrize("name", [name for name, _command in COMMANDS if EXAMPLES[name]])
def test_help_examples_run_as_written(name, workspace, dns, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(workspace, work)
    for command in EXAMPLES[name]:
        created = re.match(r"pypds init (\S+)", command.text)
        if created:
            shutil.rmtree(work / created.group(1))
    shell = Shell(work, dns.address)
    shell.one_server = True
    companions: list = []
    try:
        start_companion(name, shell, companions)
        for command in EXAMPLES[name]:
            if INTERNET.match(command.text):
                parse_only(command.text)
            elif command.text.startswith("curl ") and shutil.which("curl") is None:
                continue
            else:
                shell.run(command)
    finally:
        shell.stop_servers()
        for stub in companions:
            stub.__exit__(None, None, None)


def test_every_command_has_an_example():
    missing = [name for name, _command in COMMANDS if not EXAMPLES[name]]
    assert not missing, f"commands without an example in their --help: {missing}"


def test_example_keys_are_the_workspace_key():
    """The did:key the examples name is the key alice's commits are signed with (so they verify)."""
    named = {key for found in EXAMPLES.values() for c in found for key in re.findall(r"did:key:\w+", c.text)}
    assert named == {EXAMPLE_KEY.did_key}


def test_internet_examples_are_few_and_parsed(workspace):
    """The examples left unrun need the internet; each has a loopback twin that runs."""
    unrun = [c.text for found in EXAMPLES.values() for c in found if INTERNET.match(c.text)]
    assert len(unrun) == 8, unrun
    with pytest.raises(click.UsageError):
        parse_only("pypds download alice.bsky.social --no-such-option")
