"""Running documentation as written: the README's blocks and the ``--help`` examples.

Conventions (shared by ``test_readme.py`` and ``test_help_examples.py``):

* Commands run in bash in a working directory, with ``pypds`` this checkout's
  command line. Nothing leaves 127.0.0.1: ``PYPDS_DNS`` points every DNS query
  at a loopback stub (which knows no names) and ``PYPDS_PLC_URL`` at a
  loopback port nothing listens on, so a lookup the docs do not point
  somewhere fails at once instead of reaching the internet.
* The ports 2583-2589, as the docs write them, are mapped to free ports (the
  same doc port to the same free port throughout a run), so runs in parallel
  checkouts do not collide. Nothing else in a command is changed.
* A ``pypds serve`` command runs in the background, as in another terminal:
  the run waits until it prints that it is serving, and stops it at the end.
* A console transcript's ``$ echo $?`` followed by a number is the exit status
  the command before it must have; every other command must exit 0.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from .netstubs import free_port

ROOT = Path(__file__).resolve().parent.parent
DOC_PORT = re.compile(r"(?<![0-9])258[3-9](?![0-9])")
SERVE = re.compile(r"^\s*pypds\s+serve\b")
#: Seconds a background server may take to say it is serving.
SERVER_START = 30.0
#: Seconds any one command may take.
COMMAND_TIMEOUT = 120.0


@dataclass(frozen=True)
class Command:
    """One command line of the docs, where it is, and the exit status it must end with."""

    text: str
    where: str
    status: int = 0


class DocFailure(AssertionError):
    """A documented command did not do what the docs say."""


class Shell:
    """A working directory and environment in which documented commands run as written."""

    def __init__(self, workdir: Path, dns_address: str) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports: dict[str, str] = {}
        self.servers: list[subprocess.Popen] = []
        self.one_server = False  # True: a new `pypds serve` stops the running one (as Ctrl-C would)
        bin_dir = workdir.parent / f".{workdir.name}-bin"
        bin_dir.mkdir(exist_ok=True)
        shim = bin_dir / "pypds"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pypds.cli "$@"\n')
        shim.chmod(0o755)
        self.loopback_env = {"PYPDS_DNS": dns_address, "PYPDS_PLC_URL": f"http://127.0.0.1:{free_port()}"}
        self.env = {
            **os.environ,
            **self.loopback_env,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT),
        }
        for name in ("PYPDS_SIGNING_KEY", "PYPDS_PASSWORD", "PYPDS_ACCOUNT_PASSWORD", "PYPDS_DEBUG"):
            self.env.pop(name, None)

    def localize(self, text: str) -> str:
        """``text`` with each documented port (2583-2589) replaced by this run's free port for it."""
        return DOC_PORT.sub(self._port, text)

    def _port(self, found: re.Match[str]) -> str:
        if found.group() not in self.ports:
            self.ports[found.group()] = str(free_port())
        return self.ports[found.group()]

    def run(self, command: Command) -> subprocess.CompletedProcess[str]:
        """Run one command (in the background if it starts a server); check its exit status."""
        if SERVE.match(command.text):
            if self.one_server:
                self.stop_servers()
            self.start_server(command)
            return subprocess.CompletedProcess(command.text, 0, "", "")
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", self.localize(command.text)],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        if done.returncode != command.status:
            raise DocFailure(
                f"{command.where}: `{command.text}` exited {done.returncode}, expected {command.status}\n"
                f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
            )
        return done

    def run_script(self, script: str, where: str) -> None:
        """Run a whole shell block (``bash -e``: any failing line fails it)."""
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", self.localize(script)],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        if done.returncode != 0:
            raise DocFailure(f"{where}: exited {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}")

    def start_server(self, command: Command) -> str:
        """Start a ``pypds serve`` command in the background; returns its first line once it serves."""
        process = subprocess.Popen(
            ["bash", "-c", "exec " + self.localize(command.text)],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.servers.append(process)
        assert process.stderr is not None
        ready, _, _ = select.select([process.stderr], [], [], SERVER_START)
        line = process.stderr.readline() if ready else ""
        if not line.startswith("serving "):
            self._stop(process)
            raise DocFailure(f"{command.where}: `{command.text}` did not start serving: {line}{process.stderr.read()}")
        threading.Thread(target=process.stderr.read, daemon=True).start()  # a full pipe must not stall it
        return line

    def stop_servers(self) -> None:
        """Stop every background server (SIGTERM, then SIGKILL if it does not stop in 10 s)."""
        while self.servers:
            self._stop(self.servers.pop())

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def transcript_commands(text: str, where: str, first_line: int) -> list[Command]:
    """The ``$ `` commands of a console transcript (``\\`` continues a line), each with the status it
    must exit with: the number after a following ``$ echo $?``, else 0."""
    lines = text.splitlines()
    commands: list[Command] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("$ "):
            start = index
            parts = [line[2:]]
            while parts[-1].endswith("\\") and index + 1 < len(lines):
                index += 1
                parts.append(lines[index])
            text_ = "\n".join(parts)
            if text_.strip() == "echo $?" and commands and index + 1 < len(lines):
                previous = commands.pop()
                commands.append(Command(previous.text, previous.where, int(lines[index + 1].strip())))
            else:
                commands.append(Command(text_, f"{where}:{first_line + 1 + start}"))
        index += 1
    return commands
