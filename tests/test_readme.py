"""Every code block of README.md runs as written, in order, in a temporary directory.

How blocks run (see ``doc_runner.py`` for the shell side):

* ```` ```python ```` blocks run in one Python namespace, one after the
  other, in ``<tmp>/python`` (a block may use what an earlier one defined,
  as a reader going down the page would).
* ```` ```sh ```` blocks run whole under ``bash -e``; ```` ```console ````
  transcripts run command by command (``$ `` lines), each with the exit
  status the transcript shows; both in ``<tmp>/shell``. ``pypds serve``
  runs in the background until the end of the README.
* ```` ```text ```` blocks are layouts and tables, not code, and are not run.
* A block preceded by ``<!-- readme-test: skip (why) -->`` is not run; its
  reason must be given. Only blocks that install software, run this test
  suite, or need the internet are skipped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .doc_runner import ROOT, Shell, transcript_commands
from .netstubs import DnsStub

README = ROOT / "README.md"
LANGUAGES = {"python", "sh", "console", "text"}
MARK = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->")
#: What a reader cannot run as written: an elided value (``{...}``), a cut-off did:key or CID.
PLACEHOLDER = re.compile(r"\{\.\.\.\}|\b(?:zQ3sh|zDn|bafy|bafk)\w*\.\.\.")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    skip: str | None = None

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


def readme_blocks() -> list[Block]:
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = re.fullmatch(r"```(\S*)\s*", lines[index])
        if opening is None:
            index += 1
            continue
        start = index
        index += 1
        while index < len(lines) and not lines[index].startswith("```"):
            index += 1
        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        mark = MARK.fullmatch(previous.strip())
        skip = mark.group(1) if mark else None
        blocks.append(Block(start + 1, opening.group(1), "\n".join(lines[start + 1 : index]) + "\n", skip))
        index += 1
    return blocks


BLOCKS = readme_blocks()
RUN = [block for block in BLOCKS if block.lang != "text" and block.skip is None]


@dataclass
class Session:
    """What the README's blocks share, in the order they come."""

    shell: Shell
    python_dir: Path
    namespace: dict[str, Any] = field(default_factory=lambda: {"__name__": "__readme__"})
    attempted: set[int] = field(default_factory=set)

    def run_through(self, block: Block) -> None:
        """Run the blocks before ``block`` not run yet (when a test is selected alone), then ``block``."""
        for earlier in RUN[: RUN.index(block) + 1]:
            if earlier.line not in self.attempted:
                self.attempted.add(earlier.line)
                self.run(earlier)

    def run(self, block: Block) -> None:
        if block.lang == "python":
            self.run_python(block)
        elif block.lang == "sh":
            self.shell.run_script(block.text, block.where)
        else:
            for command in transcript_commands(block.text, "README.md", block.line):
                self.shell.run(command)

    def run_python(self, block: Block) -> None:
        code = compile("\n" * block.line + self.shell.localize(block.text), str(README), "exec")
        cwd = Path.cwd()
        os.chdir(self.python_dir)
        try:
            exec(code, self.namespace)
        finally:
            os.chdir(cwd)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    (root / "python").mkdir()
    with DnsStub() as dns, pytest.MonkeyPatch.context() as patch:
        shell = Shell(root / "shell", dns.address)
        for name, value in shell.loopback_env.items():  # the Python blocks' lookups stay on loopback too
            patch.setenv(name, value)
        try:
            yield Session(shell, root / "python")
        finally:
            shell.stop_servers()


@pytest.mark.parametrize("block", RUN, ids=lambda block: f"line{block.line}-{block.lang}")
def test_readme_block_runs_as_written(block, session):
    session.run_through(block)


def test_every_block_says_what_it_is():
    untagged = [block.where for block in BLOCKS if block.lang not in LANGUAGES]
    assert not untagged, f"blocks need a language ({', '.join(sorted(LANGUAGES))}): {untagged}"


def test_no_block_holds_a_placeholder():
    found = [
        f"{block.where}+{number}: {line.strip()}"
        for block in BLOCKS
        if block.lang != "text"
        for number, line in enumerate(block.text.splitlines(), 1)
        if PLACEHOLDER.search(line)
    ]
    assert not found, "write a value that runs (say 'use your own' where it is the reader's):\n" + "\n".join(found)


def test_skipped_blocks_say_why_and_name_files_that_exist():
    skipped = [block for block in BLOCKS if block.skip is not None]
    assert skipped, "the install and test-suite commands are expected to be skipped"
    for block in skipped:
        assert re.fullmatch(r"skip \(.+\)", block.skip), f"{block.where}: a skip needs a reason: {block.skip!r}"
        for name in re.findall(r"(?:examples|tests)/[\w/.-]+\.(?:py|sh)", block.text):
            assert (ROOT / name).is_file(), f"{block.where} names {name}, which does not exist"
